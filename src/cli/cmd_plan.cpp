// `trident plan --model PRESET --world N [--memory-per-rank BYTES]`: lists the dp x tp x pp
// layouts (with ZeRO stage, schedule, micro-batches and, for a mixture of experts, the
// expert-parallel split ep of dp) that fit, with predicted per-rank
// memory by category and predicted step time, ranked by tokens/s. Compute costs are measured
// here, once, on one thread per rank (plan/cost_model.h); the models are in src/plan/.
// Under mpirun with W > 1 ranks (scripts/trident-mpirun -n W), all ranks measure together:
// compute while every rank computes, and the links with real allreduces and messages
// between the ranks (plan/calibrate.h), so oversubscribed cores are priced in; rank 0 prints.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <type_traits>
#include <cstdio>
#include <exception>
#include <fstream>
#include <nlohmann/json.hpp>
#include <memory>
#include <span>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "cli/cli11_errors.h"
#include "cli/commands.h"
#include "ckpt/checkpoint.h"
#include "core/memory.h"
#include "kernels/matmul_engine.h"
#include "nn/model_config.h"
#include "nn/parameters.h"
#include "train/memory_check.h"
#include "comm/communicator.h"
#include "comm/node_order.h"
#include "comm/runtime.h"
#include "core/check.h"
#include "plan/calibrate.h"
#include "plan/calibrate_disk.h"
#include "plan/placement.h"
#include "plan/planner.h"
#include "quant/quantized_model.h"
#include "train/qlora.h"
#include "train/run_config.h"

namespace trident::cli {
namespace {

// "8GiB", "512MiB", "2G", "1.5e9", "0" -> bytes.
double parse_bytes(const std::string& text) {
  std::size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    TRI_FAIL("--memory-per-rank '{}' is not a byte count; write e.g. 2GiB, 512MiB or 1e9", text);
  }
  std::string unit = text.substr(used);
  std::transform(unit.begin(), unit.end(), unit.begin(), [](unsigned char c) { return std::tolower(c); });
  double mult = 1;
  if (unit.empty() || unit == "b") mult = 1;
  else if (unit == "k" || unit == "kib" || unit == "kb") mult = 1024.0;
  else if (unit == "m" || unit == "mib" || unit == "mb") mult = 1024.0 * 1024;
  else if (unit == "g" || unit == "gib" || unit == "gb") mult = 1024.0 * 1024 * 1024;
  else if (unit == "t" || unit == "tib" || unit == "tb") mult = 1024.0 * 1024 * 1024 * 1024;
  else TRI_FAIL("--memory-per-rank '{}': unknown unit '{}'; use B, KiB, MiB, GiB or TiB", text, unit);
  TRI_CHECK(v >= 0, "--memory-per-rank must not be negative, got {}", text);
  return v * mult;
}

// Adds `trident train`'s own declaration of each named field (run_config.h: the flag, its --help
// line and lower bound) as an option of `app` bound to that field, so plan's LoRA flags are
// train's, one fact.
struct TrainFieldAdder {
  CLI::App& app;
  std::vector<std::string_view> names;
  template <class F, class M>
  void operator()(const F& f, M& member) const {
    if constexpr (std::is_same_v<M, int> || std::is_same_v<M, double> || std::is_same_v<M, std::string>) {
      if (std::find(names.begin(), names.end(), f.name) == names.end()) return;
      std::string flag = "--" + std::string(f.name);
      std::replace(flag.begin(), flag.end(), '_', '-');
      CLI::Option* opt = app.add_option(flag, member, std::string(f.help));
      if constexpr (!std::is_same_v<M, std::string>) {
        if (std::isfinite(f.bounds.min)) opt->check(CLI::Range(static_cast<M>(f.bounds.min), std::numeric_limits<M>::max()));
      }
    }
  }
};

}  // namespace

int run_plan(int argc, char** argv) {
  CLI::App app{"Predict per-rank memory and step time of every dp x tp x pp layout (ZeRO stage, "
               "pipeline schedule, micro-batches; for a mixture of experts also each expert-parallel "
               "split ep of dp, with ZeRO 0) of a model on N ranks, ranked by tokens/s among "
               "those that fit. Compute costs are measured on this machine at start.",
               "trident plan"};
  std::string model = "small", memory = "0";
  int world = 0, micro_batches = 0, cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  int threads = 0, top = 0;
  int64_t batch = 8, seq = 0;
  double bucket_mb = 25.0, link_gbps = 0, latency_us = 20, flops = 0;
  bool sp = false, all = false, no_overlap = false;
  std::string json_out, recompute = "none", offload = "auto", offload_dir, precision = "fp32", grad_dtype = "fp32";
  int offload_block_kib = 4096;
  double disk_mbps = 0;
  app.add_option("--model", model, fmt::format("preset ({}) or a Hugging Face config.json (gpt2, llama or mixtral)", fmt::join(nn::model_preset_names(), ", ")))->capture_default_str();
  app.add_option("--world", world, "ranks (dp * tp * pp)")->required();
  app.add_option("--memory-per-rank", memory, "bytes each rank may use (e.g. 2GiB); 0: unlimited")->capture_default_str();
  app.add_option("--batch-size", batch, "global sequences per optimizer step")->capture_default_str();
  app.add_option("--seq-len", seq, "tokens per sequence; default: the model's n_positions");
  app.add_option("--micro-batches", micro_batches, "micro-batches per dp rank; 0: try every divisor")->capture_default_str();
  app.add_flag("--sequence-parallel", sp, "plan tp layouts with sequence parallelism");
  app.add_option("--recompute", recompute,
                 "activation recomputation the run will use: none, selective or full (docs/memory.md)")
      ->capture_default_str();
  app.add_option("--precision", precision,
                 "the run's --precision: its matmuls are timed at it (bf16 is about twice fp32 where the CPU has "
                 "bf16 instructions); bf16/fp16 save the activations read only as matmul operands in 16 bits and "
                 "bf16 adds its bf16 weight copy, 2 bytes per parameter held, and at ZeRO 1-2 shards the layer matrices' "
                 "fp32 master over dp (gradients, moments, master weights and the other activations stay fp32, "
                 "docs/memory.md)")
      ->check(CLI::IsMember(std::vector<std::string>(kernels::precision_names().begin(), kernels::precision_names().end())))
      ->capture_default_str();
  app.add_option("--grad-dtype", grad_dtype,
                 "the run's --grad-dtype: bf16 (with --precision bf16) or fp16 (with --precision fp16) store the "
                 "gradients at rest in 2 bytes an element (ZeRO 2-3's shard; ZeRO 0-1's flat buffer plus the largest "
                 "layer group's fp32 working buffer, and not under a pipeline: such layouts are listed as not valid; "
                 "docs/memory.md)")
      ->check(CLI::IsMember(std::vector<std::string>(parallel::grad_dtype_names().begin(), parallel::grad_dtype_names().end())))
      ->capture_default_str();
  app.add_option("--bucket-mb", bucket_mb, "DDP/ZeRO gradient bucket size, MiB")->capture_default_str();
  app.add_option("--offload", offload,
                 "optimizer offload (docs/planner.md): auto proposes --offload optimizer for a layout that "
                 "does not fit --memory-per-rank without it (needs the disk: --offload-dir or --disk-mbps); "
                 "optimizer plans every layout with its AdamW moments on disk (memory then counts only three "
                 "staging blocks of them, docs/memory.md; in bf16/fp16 at ZeRO 1-2 the fp32 master too, and a "
                 "one-rank layout is planned as ZeRO 1 for it); optimizer+params also puts ZeRO-3 layouts' parameter "
                 "shards there (auto tries it for a ZeRO-3 layout, or one dp rank as ZeRO 3, that optimizer offload does "
                 "not fit); none never offloads")
      ->check(CLI::IsMember({"none", "auto", "optimizer", "optimizer+params"}))->capture_default_str();
  app.add_option("--offload-dir", offload_dir,
                 "the directory the run offloads to: its disk's sequential O_DIRECT read and write bandwidth "
                 "is measured there (a 64 MiB probe file, removed after) to price offload");
  app.add_option("--offload-block-kib", offload_block_kib,
                 "the run's --offload-block-kib: staging memory and the probe's request size (2 x this)")
      ->capture_default_str();
  app.add_option("--disk-mbps", disk_mbps,
                 "the offload disk's read and write bandwidth in MB/s instead of measuring --offload-dir");
  app.add_option("--cores", cores, "cores all ranks share (one machine)")->capture_default_str();
  app.add_option("--threads", threads, "threads per rank; default: max(1, cores / world)");
  app.add_option("--link-gbps", link_gbps,
                 "link bandwidth in Gbit/s; default: measured (under mpirun: pair allreduces of 16 MiB; "
                 "alone: memcpy / 2)");
  app.add_option("--latency-us", latency_us,
                 "per-message latency, microseconds; default: measured under mpirun, else 20")->capture_default_str();
  app.add_option("--flops", flops, "use this FLOP/s per rank instead of timing the model here");
  app.add_flag("--no-overlap", no_overlap, "dp communication does not overlap backward");
  app.add_flag("--all", all, "show every micro-batch count (default: the best fitting one per layout)");
  app.add_option("--top", top, "show at most this many rows; 0: all")->capture_default_str();
  app.add_option("--json", json_out, "also write every fitting row (rank order) as JSON lines to this file");
  // A LoRA / QLoRA run (docs/lora.md): train's --init-from (its config.json is the model; a
  // `trident quantize` output is a QLoRA base, packed) and --lora-rank/--lora-alpha/--lora-targets.
  train::RunConfig run;
  for_each_field(run.train, run.engine, TrainFieldAdder{app, {"init_from"}});
  for_each_field(run.model, TrainFieldAdder{app, {"lora_rank", "lora_alpha", "lora_targets"}});
  if (const std::optional<int> rc = parse_command_line(app, argc, argv)) return *rc;

  comm::MpiRuntime mpi(&argc, &argv);
  const int ranks = mpi.world_size();
  const bool root = mpi.world_rank() == 0;
  // Ranks regrouped node by node as `trident train` does (comm/node_order.h), so the calibrated
  // pairs and the planned groups sit on the nodes the job's will.
  std::unique_ptr<comm::NodeMajorWorld> placed;
  std::unique_ptr<comm::Communicator> world_comm;
  if (ranks > 1) {
    std::unique_ptr<comm::Communicator> launcher = mpi.world();
    placed = std::make_unique<comm::NodeMajorWorld>(*launcher, "plan-calibration");
    world_comm = placed->take_world();
  }
  auto out = [&](const std::string& text) {
    if (root) std::fputs(text.c_str(), stdout);
  };

  plan::PlanRequest req;
  train::ModelOptions& mo = run.model;
  mo.model = model;
  const std::string& init_from = run.train.init_from;
  if (init_from.empty()) {
    TRI_CHECK(mo.lora_rank == 0, "plan --lora-rank plans a LoRA run, which trains adapters on a base checkpoint: "
              "pass that checkpoint as --init-from DIR, as `trident train` takes it");
    req.model = train::resolve_model_config(mo);
  } else {
    // The model `train --init-from DIR` would build (train/trainer.cpp): the directory's shape,
    // the LoRA settings, and a quantized directory's packed base.
    const std::string dir = ckpt::resolve_checkpoint(init_from);
    req.model = train::with_objective_overrides(quant::inference_config(dir), mo);
    if (quant::is_quantized_checkpoint(dir)) req.model = train::with_packed_base(req.model, quant::quantized_format(dir), dir);
  }
  req.world = world;
  req.batch_size = batch;
  req.seq_len = seq > 0 ? seq : req.model.n_positions;
  req.micro_batches = micro_batches;
  req.sequence_parallel = sp;
  req.recompute = nn::parse_recompute(recompute);
  {
    const auto names = kernels::precision_names();
    req.precision = static_cast<kernels::Precision>(std::find(names.begin(), names.end(), precision) - names.begin());
    const auto g = parallel::grad_dtype_names();
    req.grad_dtype = static_cast<parallel::GradDType>(std::find(g.begin(), g.end(), grad_dtype) - g.begin());
    TRI_CHECK(parallel::grad_dtype_fits(req.grad_dtype, req.precision),
              "--grad-dtype {} needs --precision {} (this plan has --precision {}): 16-bit gradients are stored in "
              "the precision the matmuls round to; use --grad-dtype fp32 or --precision {}",
              grad_dtype, grad_dtype, precision, grad_dtype);
  }
  req.bucket_mb = bucket_mb;
  req.offload_optimizer = offload == "optimizer" || offload == "optimizer+params";
  req.offload_params = offload == "optimizer+params";
  req.offload_auto = offload == "auto";
  TRI_CHECK(offload_block_kib > 0 && offload_block_kib % 4 == 0,
            "--offload-block-kib must be a positive multiple of 4 (direct I/O's 4 KiB pages), got {}", offload_block_kib);
  req.offload_block_bytes = 1024.0 * offload_block_kib;
  TRI_CHECK(!req.offload_optimizer || !offload_dir.empty() || disk_mbps > 0,
            "plan --offload optimizer(+params) needs the offload disk's speed: pass --offload-dir DIR (the directory "
            "the run will offload to, measured there) or --disk-mbps MBPS");
  TRI_CHECK(disk_mbps >= 0, "--disk-mbps must be positive, got {}", disk_mbps);
  req.memory_per_rank = parse_bytes(memory);
  plan::validate_request(req);
  // The planner builds each layout's model chunks to count them (metadata only, one ParamInfo
  // per tensor): refuse a depth whose metadata alone would not fit, instead of hanging in it.
  if (const auto avail = train::available_memory_bytes()) {
    const double meta = (12.0 * req.model.n_layer + 5.0) * static_cast<double>(sizeof(nn::ParamInfo));
    TRI_CHECK(meta <= *avail / 4,
              "cannot plan {}: describing its {} layers' tensors alone takes {} ({} is available); "
              "such a model cannot be built here at any layout",
              req.model.describe(), req.model.n_layer, format_bytes(meta), format_bytes(*avail));
  }
  TRI_CHECK(cores >= 1, "--cores must be at least 1, got {}", cores);

  plan::MachineModel machine;
  machine.cores = cores;
  machine.threads_per_rank = threads > 0 ? threads : std::max(1, cores / world);
  machine.overlap = !no_overlap;
  machine.comm.latency = latency_us * 1e-6;
  std::string comm_note = link_gbps > 0 ? "" : " (bandwidth: measured memcpy / 2)";
  if (ranks > 1) {
    // All ranks measure the links together (the same values on every rank).
    const double share = std::min(1.0, static_cast<double>(cores) / (ranks * machine.threads_per_rank));
    const std::vector<int>& node_of = placed->node_of();
    const plan::CommCalibration cal = plan::calibrate_comm(*world_comm, share, node_of);
    auto take = [&](plan::CommModel& link, const plan::CommModel& measured) {
      link.bandwidth = measured.bandwidth;
      link.copy_bandwidth = measured.copy_bandwidth;
      link.p2p_latency = measured.p2p_latency;
      link.latency = app.count("--latency-us") == 0 ? measured.latency : latency_us * 1e-6;
      if (link_gbps > 0) link.bandwidth = link.copy_bandwidth = link_gbps * 1e9 / 8;
    };
    take(machine.comm, cal.model);
    machine.world_allreduce_s = cal.world_allreduce_small_s;
    auto describe = [&](const char* where, const plan::PairTimes& t) {
      return fmt::format(
          "{}: 4-byte allreduce {:.0f} us in pairs, 4-byte message {:.0f} us, {:.0f} MiB allreduce in pairs "
          "{:.1f} ms; one pair while the other ranks compute: 4-byte allreduce {:.0f} us, message {:.0f} us",
          where, t.allreduce_small_s * 1e6, t.p2p_s * 1e6, cal.large_bytes / 1048576.0,
          t.allreduce_large_s * 1e3, t.loaded_allreduce_small_s * 1e6, t.loaded_p2p_s * 1e6);
    };
    out(fmt::format("calibrated with {} ranks at once ({} over all {}: 4-byte allreduce {:.0f} us, "
                    "{} per step); {}\n",
                    ranks, placed->nodes() > 1 ? fmt::format("{} nodes", placed->nodes()) : "one node", ranks,
                    cal.world_allreduce_small_s * 1e6, machine.step_world_allreduces,
                    describe(placed->nodes() > 1 ? "inside a node" : "links", cal.intra)));
    if (cal.multi_node) {
      take(machine.inter_node, cal.inter_model);
      machine.inter_node_streams = std::max(1, ranks / placed->nodes());
      out(fmt::format("calibrated across nodes: {}\n", describe("pairs on different nodes", cal.inter)));
      // The plan's world may differ from the calibrated one: keep the ranks per node.
      machine.node_of_rank = world == ranks ? node_of : plan::block_placement(world, ranks / placed->nodes());
    }
    const plan::WaitCalibration wc = plan::calibrate_wait_cpu(*world_comm, cores, machine.threads_per_rank);
    machine.wait_cpu = wc.wait_cpu;
    out(fmt::format("a rank computing while the other {} wait for its message runs {:.2f}x slower than while they "
                    "sleep ({:.0f} vs {:.0f} ms): a waiting rank keeps {:.2f} of a core busy{}\n",
                    ranks - 1, wc.with_waiters_s / std::max(wc.alone_s, 1e-9), wc.with_waiters_s * 1e3,
                    wc.alone_s * 1e3, wc.wait_cpu,
                    wc.wait_cpu > 0 ? " (pipeline bubbles cost CPU)" : " (bubbles leave the cores to others)"));
    comm_note = link_gbps > 0 ? " (latency measured)"
                              : fmt::format(" (measured; CPU copy rate {:.2f} GB/s per core)",
                                            machine.comm.copy_bandwidth / 1e9);
    if (ranks != world) {
      out(fmt::format("note: calibrated with {} ranks but planning --world {}; run under "
                      "scripts/trident-mpirun -n {} to measure the job's own contention\n",
                      ranks, world, world));
    }
  } else {
    machine.comm.bandwidth = link_gbps > 0 ? link_gbps * 1e9 / 8 : plan::measure_memcpy_bandwidth() / 2;
  }

  std::string disk_note;
  if (offload != "none" && disk_mbps > 0) {
    machine.disk.read_bandwidth = machine.disk.write_bandwidth = disk_mbps * 1e6;
    disk_note = fmt::format("offload disk: {:.0f} MB/s read and write (--disk-mbps)", disk_mbps);
  } else if (offload != "none" && !offload_dir.empty()) {
    // Rank 0 alone probes (the node's ranks share the disk: the cost model divides it); every
    // rank learns the figures, or that the probe failed (rank 0 says why).
    double got[3] = {0, 0, 0};  // read, write, direct
    std::string failed;
    plan::DiskCalibration dc;
    if (root) {
      try {
        dc = plan::calibrate_disk(offload_dir, static_cast<std::size_t>(2 * req.offload_block_bytes));
        got[0] = dc.model.read_bandwidth, got[1] = dc.model.write_bandwidth, got[2] = dc.direct;
      } catch (const std::exception& e) {
        failed = e.what();
      }
    }
    if (world_comm) {
      comm::throw_if_root_failed(*world_comm, failed);  // rank 0's error, naming the directory, on every rank
      world_comm->broadcast(std::span<double>(got, 3), 0).wait();
    } else if (!failed.empty()) {
      throw Error(failed);
    }
    machine.disk.read_bandwidth = got[0];
    machine.disk.write_bandwidth = got[1];
    disk_note = fmt::format("offload disk under {}: sequential {} read {:.0f} MB/s, write {:.0f} MB/s "
                            "({:.0f} MiB probe in {} requests)",
                            offload_dir, got[2] != 0 ? "O_DIRECT" : "buffered (the file system refuses O_DIRECT)",
                            got[0] / 1e6, got[1] / 1e6, dc.probe_bytes / 1048576.0, format_bytes(dc.request_bytes));
  }

  std::unique_ptr<plan::ComputeModel> compute;
  plan::MeasuredComputeModel* measured = nullptr;
  std::unique_ptr<plan::CommTimingSync> sync;
  if (flops > 0) {
    compute = std::make_unique<plan::FlopComputeModel>(req.model, flops);
  } else {
    const auto names = kernels::precision_names();
    const auto at = std::find(names.begin(), names.end(), precision);
    auto m = std::make_unique<plan::MeasuredComputeModel>(req.model, machine.threads_per_rank,
                                                          static_cast<kernels::Precision>(at - names.begin()));
    if (ranks > 1) {
      sync = std::make_unique<plan::CommTimingSync>(*world_comm, cores, machine.threads_per_rank);
      m->set_sync(sync.get());  // every rank runs the same make_plan, so they time in step
    }
    measured = m.get();
    compute = std::move(m);
  }
  out(fmt::format("model {}: {}{}\n", init_from.empty() ? model : init_from, req.model.describe(),
                  req.model.packed_base() ? fmt::format(" (frozen base packed as {}{})", req.model.packed_base_format,
                                                        req.model.packed_base_group > 0
                                                            ? fmt::format(" g{}", req.model.packed_base_group) : "")
                                          : ""));
  out(fmt::format("machine: {} cores shared by {} ranks x {} thread(s); links {:.2f} GB/s, {:.0f} us latency{}\n",
                  cores, world, machine.threads_per_rank, machine.comm.bandwidth / 1e9,
                  machine.comm.latency * 1e6, comm_note));
  if (!disk_note.empty()) out(disk_note + "\n");
  std::fflush(stdout);
  const plan::Plan p = plan::make_plan(req, *compute, machine);
  if (measured && ranks > 1) {
    out(fmt::format("compute costs measured in {:.1f} s with all {} ranks computing at once (one block, "
                    "embedding, head, AdamW; {} matmuls; median rank, x {:.2f} for each rank's share of the cores)\n",
                    measured->calibration_seconds(), ranks, precision, sync->core_share()));
  } else if (measured) {
    out(fmt::format("compute costs measured on this machine in {:.1f} s (one block, embedding, head, AdamW; "
                    "{} matmuls)\n", measured->calibration_seconds(), precision));
  } else {
    out(fmt::format("compute costs: {:.3g} FLOP/s per rank (--flops)\n", flops));
  }
  plan::FormatOptions fo;
  fo.all = all;
  fo.top = top;
  out(plan::format_plan(p, req, fo));
  if (root && !json_out.empty()) {
    std::ofstream js(json_out);
    TRI_CHECK(js.good(), "cannot write --json {}", json_out);
    for (const plan::PlanRow& r : p.rows) {
      if (!r.fits) continue;  // as documented: the fitting rows (they come first)
      const plan::Layout& l = r.layout;
      nlohmann::json j{{"dp", l.dp}, {"tp", l.tp}, {"pp", l.pp}, {"ep", l.ep}, {"zero", l.zero},
                       {"schedule", pp::to_string(l.schedule)}, {"virtual_stages", l.virtual_stages},
                       {"micro_batches", l.micro_batches}, {"sequence_parallel", l.sequence_parallel},
                       {"fits", r.fits}, {"tokens_per_s", r.step.tokens_per_s}, {"step_s", r.step.step_s},
                       {"dedicated_s", r.step.dedicated_s}, {"shared_s", r.step.shared_s}, {"contended_s", r.step.contended_s},
                       {"sync_s", r.step.sync_s}, {"dp_comm_s", r.step.dp_comm_s}, {"ep_comm_s", r.step.ep_comm_s},
                       {"offload", l.offload}, {"offload_s", r.step.offload_s}, {"param_read_s", r.step.param_read_s},
                       {"param_stall_s", r.step.param_stall_s},
                       {"memory_bytes", r.memory.worst().total()}, {"calibrated_ranks", ranks}};
      const plan::MemoryBreakdown& w = r.memory.worst();
      j["memory"] = {{"parameters", w.params}, {"packed_base", w.packed_base}, {"gradients", w.grads},
                     {"optimizer_state", w.optimizer}, {"activations", w.activations}, {"workspace", w.workspace},
                     {"offloaded", w.offloaded}};
      js << j.dump() << "\n";
    }
  }
  const plan::PlanRow& best = p.rows.front();
  const std::string model_flags =
      init_from.empty() ? fmt::format("--model {}", model)
                        : fmt::format("--init-from {}{}", init_from,
                                      req.model.lora.enabled()
                                          ? fmt::format(" --lora-rank {} --lora-alpha {:g} --lora-targets {}", req.model.lora.rank,
                                                        req.model.lora.alpha, fmt::join(req.model.lora.targets, ","))
                                          : "");
  out(fmt::format("best: scripts/trident-mpirun -n {} build/trident train {} --batch-size {} --seq-len {} {}{}{}\n",
                  world, model_flags, req.batch_size, req.seq_len, best.layout.train_flags(),
                  fmt::format("{}{}{}{}", req.recompute != nn::Recompute::kNone ? fmt::format(" --recompute {}", recompute) : "",
                              precision != "fp32" ? fmt::format(" --precision {}", precision) : "",
                              grad_dtype != "fp32" ? fmt::format(" --grad-dtype {}", grad_dtype) : "",
                              best.layout.offload ? fmt::format(" --offload-dir {}", offload_dir.empty() ? "DIR" : offload_dir) : ""),
                  machine.threads_per_rank > 1 ? fmt::format(" --threads {}", machine.threads_per_rank) : ""));
  if (ranks == 1 && world > 1 && flops <= 0) {
    out(fmt::format("hint: timed alone, with {} us latency assumed; run under scripts/trident-mpirun -n {} "
                    "(same arguments) to measure compute and links with all {} ranks at once, which "
                    "prices in sharing the cores\n",
                    latency_us, world, world));
  }
  std::fflush(stdout);
  return 0;
}

}  // namespace trident::cli
