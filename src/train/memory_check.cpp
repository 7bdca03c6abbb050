// The memory check before building the engine (see memory_check.h).
#include "train/memory_check.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/check.h"
#include "core/memory.h"
#include "parallel/pipeline/schedule.h"
#include "plan/layout.h"
#include "plan/memory_model.h"
#include "train/checkpointing.h"

namespace trident::train {

namespace {

// The first number in a file ("max" and unreadable files: nullopt).
std::optional<double> read_number(const char* path) {
  std::ifstream in(path);
  std::string word;
  if (!(in >> word)) return std::nullopt;
  char* end = nullptr;
  const double v = std::strtod(word.c_str(), &end);
  if (end == word.c_str()) return std::nullopt;
  return v;
}

std::optional<double> mem_available() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  double kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib * 1024.0;
  }
  return std::nullopt;
}

// What the cgroup still allows: limit - usage (v2, else v1); nullopt without a limit.
std::optional<double> cgroup_headroom() {
  if (const auto max = read_number("/sys/fs/cgroup/memory.max")) {
    const double used = read_number("/sys/fs/cgroup/memory.current").value_or(0.0);
    return std::max(0.0, *max - used);
  }
  const auto limit = read_number("/sys/fs/cgroup/memory/memory.limit_in_bytes");
  // v1 reports "no limit" as a huge number (about 2^63).
  if (limit && *limit < 1e18) {
    const double used = read_number("/sys/fs/cgroup/memory/memory.usage_in_bytes").value_or(0.0);
    return std::max(0.0, *limit - used);
  }
  return std::nullopt;
}

bool check_disabled() {
  const char* v = std::getenv("TRIDENT_MEMORY_CHECK");
  return v != nullptr && std::strcmp(v, "0") == 0;
}

}  // namespace

std::optional<double> available_memory_bytes() {
  std::optional<double> avail = mem_available();
  if (const auto cg = cgroup_headroom()) avail = avail ? std::min(*avail, *cg) : *cg;
  return avail;
}

double floor_bytes_per_param(const nn::ModelConfig& model, bool offload_optimizer, bool offload_params,
                             bool low_precision, bool grad16) {
  // QLoRA: a packed layer matrix is at least half a byte per weight (q4), everything else more.
  if (model.packed_base()) return 0.5;
  // Optimizer offload in bf16/fp16: ZeRO-1/2's fp32 master can be on disk too (parallel/
  // zero_master.h), leaving the 16-bit copy (2) and the gradients (4). 16-bit gradients: 2 bytes
  // of the gradients' 4.
  const double full =
      (offload_params ? 4.0 : offload_optimizer ? (low_precision ? 6.0 : 8.0) : 16.0) - (grad16 ? 2.0 : 0.0);
  // LoRA: the moments are the adapters' only, and so are the gradients at ZeRO 0-1 (ZeRO 2-3's
  // shard is 4/N a parameter, which the weights' 4 already bound); the weights stay (the adapters'
  // own gradients and moments, under 1% of a run's parameters, are left out of this floor).
  return model.lora.enabled() ? std::min(full, 4.0) : full;
}

double lower_bound_bytes_per_rank(const nn::ModelConfig& model, int world, bool offload_optimizer,
                                  bool offload_params, bool low_precision, bool grad16) {
  // In memory: weights, gradients and both moments; the gradients and weights (optimizer
  // offload; the weights 16-bit under bf16/fp16); the gradient shard (optimizer+params, ZeRO 3).
  return floor_bytes_per_param(model, offload_optimizer, offload_params, low_precision, grad16) *
         static_cast<double>(model.num_parameters()) / static_cast<double>(std::max(1, world));
}

void check_model_fits(const nn::ModelConfig& model, const RunConfig& cfg, comm::Mesh& mesh) {
  model.validate();  // the parameter count in checked 64-bit arithmetic, before any estimate
  if (check_disabled()) return;
  const std::optional<double> avail = available_memory_bytes();
  if (!avail) return;  // nothing to compare with (not Linux?): the allocation will tell
  // Ranks on this node share its memory.
  const std::unique_ptr<comm::Communicator> node = mesh.world().split_node("node");
  const int local = node->size();
  auto node_sum = [&](double mine) {
    node->allreduce(std::span<double>(&mine, 1), comm::ReduceOp::kSum).wait();
    return mine;
  };
  const std::string hint = fmt::format(
      "; use a smaller model, or more ranks with --zero 3 / --tp / --pp (or a smaller --batch-size / "
      "--seq-len, or --grad-accum, or --offload optimizer --offload-dir DIR); `trident plan --model ... --world N --memory-per-rank {:.0f}MiB` "
      "lists the layouts that fit. TRIDENT_MEMORY_CHECK=0 skips this check",
      *avail / local / (1024.0 * 1024.0));
  const int world = mesh.size();

  // 1. The bound that needs nothing built.
  const bool offload = cfg.engine.offload.optimizer();
  const bool offload_params = cfg.engine.offload.params();
  const bool low_precision = cfg.engine.precision != kernels::Precision::kFp32;
  const bool grad16 = cfg.engine.grad_dtype != parallel::GradDType::kFp32;
  const double floor_per_rank = lower_bound_bytes_per_rank(model, world, offload, offload_params, low_precision, grad16);
  const double floor_node = node_sum(floor_per_rank);
  if (floor_node > *avail) {
    TRI_FAIL("the model ({}) cannot be built here: its {} parameters need at least {:g} bytes each "
             "in memory ({}), {} per rank even split over all {} ranks, {} "
             "for the {} rank(s) on this node, but only {} is available{}",
             model.describe(), model.num_parameters(), floor_bytes_per_param(model, offload, offload_params, low_precision, grad16),
             model.packed_base() ? "the frozen base packed, q4 at least"
             : model.lora.enabled() ? "the weights; gradients and AdamW moments for the adapters only"
             : offload_params ? "gradients; the weights and AdamW moments are offloaded"
             : offload && low_precision ? "16-bit weights and gradients; the AdamW moments and the fp32 master are offloaded"
             : offload      ? "weights and gradients; the AdamW moments are offloaded"
                            : "weights, gradients, two AdamW moments",
             format_bytes(floor_per_rank), world,
             format_bytes(floor_node), local, format_bytes(*avail), hint);
  }

  // 2. The planner's estimate for this layout (the engine's own checks of the layout come when
  // it is built; a layout the planner cannot model is left to them).
  plan::PlanRequest req;
  req.model = model;
  req.world = world;
  req.batch_size = cfg.data.batch_size;
  req.seq_len = cfg.data.seq_len;
  req.bucket_mb = cfg.engine.bucket_mb;
  req.sequence_parallel = cfg.engine.sequence_parallel;
  req.recompute = cfg.engine.recompute;
  req.precision = cfg.engine.precision;
  req.grad_dtype = cfg.engine.grad_dtype;
  req.offload_optimizer = offload;
  req.offload_params = offload_params;
  req.offload_block_bytes = static_cast<double>(cfg.engine.offload.block_bytes());
  plan::Layout layout;
  layout.dp = cfg.parallel.dp;
  layout.tp = cfg.parallel.tp;
  layout.pp = cfg.parallel.pp;
  layout.ep = cfg.parallel.ep;
  layout.zero = cfg.engine.zero;
  layout.schedule = cfg.engine.schedule;
  layout.virtual_stages = cfg.parallel.pp > 1 ? cfg.engine.virtual_stages : 1;
  layout.micro_batches = cfg.num_micro_batches();
  layout.sequence_parallel = cfg.engine.sequence_parallel;
  std::optional<plan::MemoryBreakdown> mine;
  try {
    if (cfg.data.seq_len <= model.n_positions && cfg.data.batch_size % cfg.parallel.dp == 0 &&
        cfg.rank_batch() % cfg.num_micro_batches() == 0) {
      const plan::MemoryPrediction p = plan::predict_memory(req, layout);
      mine = p.by_pp_rank.at(static_cast<std::size_t>(mesh.coord(comm::kPp)));
    }
  } catch (const Error&) {
    // An invalid layout: the engine's constructor names the problem.
  }
  // --async-ckpt: rank 0 also holds the checkpoint's snapshot, in fp32: the logical weights it
  // writes and both AdamW moments of what is trained (LoRA: the base and the adapters, moments of
  // the adapters only; QLoRA: the adapters and their moments, the packed base being copied).
  const double snapshot = cfg.train.async_ckpt && !cfg.train.ckpt_dir.empty() && mesh.rank() == 0
                              ? 4.0 * static_cast<double>(snapshot_floats(model))
                              : 0.0;
  const double node_total = node_sum(mine ? mine->total() + snapshot : 0.0);
  if (!mine || node_total <= *avail) return;
  TRI_FAIL("the model ({}) at this layout needs about {} resident on this rank (parameters {}, "
           "packed base {}, gradients {}, optimizer state {}, activations {}, workspace {}: trident plan's memory "
           "model; --async-ckpt snapshot {}; offloaded to disk, not counted: {}), {} for the {} "
           "rank(s) on this node, but only {} is available{}",
           model.describe(), format_bytes(mine->total() + snapshot), format_bytes(mine->params),
           format_bytes(mine->packed_base), format_bytes(mine->grads), format_bytes(mine->optimizer), format_bytes(mine->activations),
           format_bytes(mine->workspace), format_bytes(snapshot), format_bytes(mine->offloaded),
           format_bytes(node_total), local, format_bytes(*avail), hint);
}

}  // namespace trident::train
