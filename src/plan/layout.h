// Layouts the planner considers: every dp x tp x pp factorisation of the world size crossed
// with ZeRO stages (dp > 1), pipeline schedules (pp > 1: GPipe, 1F1B, interleaved with V = 2),
// micro-batch counts and, for a mixture of experts, expert-parallel splits of dp, each either
// valid for the model and batch or rejected with the
// reason the engine would give. Memory and time predictions are left to memory_model.h and
// cost_model.h; ranking to planner.h.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/matmul_engine.h"
#include "nn/model_config.h"
#include "nn/recompute.h"
#include "parallel/grad_dtype.h"
#include "parallel/pipeline/schedule.h"

namespace trident::plan {

struct Layout {
  int dp = 1, tp = 1, pp = 1;
  int zero = 0;                                       // ZeRO stage over dp (0 when dp == 1, or 3 to offload the parameters)
  pp::ScheduleKind schedule = pp::ScheduleKind::kOneFOneB;  // meaningful when pp > 1
  int virtual_stages = 1;                             // V (interleaved only)
  int micro_batches = 1;                              // M per dp rank per step
  bool sequence_parallel = false;                     // only when tp > 1
  int ep = 1;  // expert-parallel ranks out of dp (mixture of experts; expert parameters / ep)
  bool offload = false;  // --offload optimizer: this rank's AdamW moments on disk
  bool offload_params = false;  // with offload at ZeRO 3: --offload optimizer+params, the value shard too

  int world() const { return dp * tp * pp; }
  // "dp2 tp2 pp2"
  std::string shape() const;
  // "gpipe", "1f1b", "interleaved V=2", or "-" when pp == 1.
  std::string schedule_name() const;
  // The `trident train` flags that run this layout:
  // "--dp 2 --tp 2 --pp 2 --zero 1 --schedule 1f1b --micro-batches 4 --virtual-stages 1"
  // (and " --offload optimizer" or " --offload optimizer+params" when offload; the run adds
  // its --offload-dir).
  std::string train_flags() const;
  bool operator==(const Layout&) const = default;
};

// What the planner is asked about: the model, the world and the batch.
struct PlanRequest {
  nn::ModelConfig model;
  int world = 1;
  int64_t batch_size = 8;  // global sequences per optimizer step
  int64_t seq_len = 64;    // T
  int micro_batches = 0;   // 0: try every divisor of the per-dp-rank batch
  bool sequence_parallel = false;
  nn::Recompute recompute = nn::Recompute::kNone;  // activation recomputation (memory)
  // --precision: bf16/fp16 save the matmul-only activations in 16 bits (nn/saved_operand.h).
  // bf16 adds the bf16 weight copy (nn/bf16_weights.h): 2 bytes per parameter element held,
  // or per gathered element under ZeRO-3.
  kernels::Precision precision = kernels::Precision::kFp32;
  // --grad-dtype bf16|fp16: the gradients at rest take 2 bytes an element (ZeRO 2-3's shard, with
  // its fp32 buckets at 4; ZeRO 0-1's flat buffer, with the largest layer group's fp32 working
  // buffer at 4).
  parallel::GradDType grad_dtype = parallel::GradDType::kFp32;
  double bucket_mb = 25.0;       // DDP/ZeRO bucket size (working-set memory)
  // --offload optimizer: the AdamW moments on disk, three staging blocks of both in memory
  // per model chunk (optim/moment_store.h). offload_optimizer: every layout offloads;
  // offload_auto: a layout that does not fit memory_per_rank is planned again offloaded
  // (make_plan, when the machine's disk is known).
  bool offload_optimizer = false;
  // --offload optimizer+params: ZeRO-3 layouts also keep their value shard on disk (the
  // in-flight groups' gathers and reads stay resident); offload_auto tries it for a ZeRO-3
  // layout, or a one-dp-rank layout as ZeRO 3, that optimizer offload alone does not fit.
  bool offload_params = false;
  bool offload_auto = false;
  double offload_block_bytes = 4.0 * 1024 * 1024;
  double memory_per_rank = 0.0;  // bytes; 0: unlimited
};

// Throws trident::Error for requests no layout can satisfy: world < 1, batch or seq_len < 1,
// seq_len above the model's n_positions, micro_batches < 0.
void validate_request(const PlanRequest& request);

struct Candidate {
  Layout layout;
  bool valid = true;
  std::string reason;  // why not, when !valid
};

// Every layout for the request: valid ones and (with their reasons) the factorisations and
// settings the engine would reject: tp not dividing n_head or 4*n_embd, more pipeline chunks
// than layers, interleaving that does not divide the layers or the micro-batches, a batch
// that does not split over dp or into M micro-batches, and for LoRA a tp the adapters cannot
// follow or (QLoRA q4) one that cuts a packed matrix's groups (quant::check_packed_tp_split, the
// run's own rule). ZeRO 1-3 are only tried with dp > 1,
// schedules only with pp > 1. Mixture-of-experts models also get every expert-parallel split
// ep > 1 of dp that divides the experts (ZeRO 0 only, as the engine requires).
std::vector<Candidate> enumerate_layouts(const PlanRequest& request);

}  // namespace trident::plan
