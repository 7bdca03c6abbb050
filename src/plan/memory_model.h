// Predicted bytes per rank, by category, for a layout: parameters, gradients and AdamW state
// from the parameter count of each pipeline rank's model chunks (the embedding on the first
// stage, the tied head's copy of the tied embedding on the last, blocks split by pp::partition_layers, tp
// slices of the padded vocabulary), sharded over dp by the ZeRO stage (ddp_reducer.h):
//   stage 0: 4Ψ + 4Ψ + 8Ψ     1: 4Ψ + 4Ψ + 8Ψ/N     2: 4Ψ + 4Ψ/N + 8Ψ/N     3: 16Ψ/N
// (--grad-dtype bf16|fp16 stores the gradients in 2Ψ at stages 0-1, plus the largest layer
// group's fp32 working buffer during the step, and in 2Ψ/N at stages 2-3)
// (--precision bf16 adds the bf16 weight copy to the parameters: 2Ψ at stages 0-2, 2 bytes per
// gathered element at stage 3, so 18Ψ at stage 0 like Megatron's bf16 with fp32 gradients)
// (--offload optimizer moves the 8Ψ or 8Ψ/N of the moments to `offloaded`, leaving three
// staging blocks of both moments, 6 x block bytes, per model chunk resident; with ZeRO-1/2's
// sharded master in bf16/fp16 its fp32 shard joins them there, 4 bytes per operand-only shard
// element, and the staging blocks hold three parts, 9 x block bytes)
// plus the step's working sets (ZeRO-2/3: two gradient buckets in flight; ZeRO-3: the gathered
// values of the current and the prefetched layer group). Activations: the model's own formula
// (nn::Model::activation_bytes, under the request's recompute mode and precision) per micro-batch and
// chunk, times the most micro-batches the schedule holds live on that chunk (GPipe: M; 1F1B:
// min(pp - rank, M)), plus the chunk's one recompute working set
// (nn::Model::recompute_bytes); workspace: the
// backward scratch each chunk allocates. The counts come from constructing the same nn::Model
// objects the engine builds (construction allocates nothing). Expert parallelism (ep > 1):
// each rank holds E / ep experts of every MoE layer, and each MoE layer's activations add its
// token-exchange buffers (nn/moe_exchange.h, balanced routing) per live micro-batch (once per
// chunk under full recompute, which keeps one layer's activations).
// LoRA and QLoRA (nn/lora.h, quant/packed_base.h; the request's model carries lora and
// packed_base_format): the chunks are built with the adapters and the frozen base, so Ψ counts
// what the flat value buffer really holds (the adapters and every fp32 base tensor; a packed
// base matrix holds 0 there); the flat gradient buffer (ZeRO 0-1) holds the adapters only
// (ParameterSet::grad_numel), while ZeRO 2-3's shard and buckets, cut from the value layout,
// still span the frozen tensors; the AdamW moments are 8 bytes per trained
// element of the optimizer's ranges (AdamW::moment_count: the adapters only; under ZeRO >= 1 the
// most any dp rank's shard holds, the ranks' shards no longer being alike); packed_base is this
// rank's packed slices (quant::packed_matrix_bytes: q4 G/2 + 8 bytes per group of G weights,
// int8 1 byte + 4 per row) and the workspace adds the one fp32 scratch the largest layer group's
// packed matrices are dequantized into.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "nn/model.h"
#include "plan/layout.h"

namespace trident::plan {

struct MemoryBreakdown {
  double params = 0, grads = 0, optimizer = 0, activations = 0, workspace = 0;  // bytes
  double packed_base = 0;  // QLoRA: the frozen base's packed matrices (MemCategory::kPackedBase)
  double offloaded = 0;  // on disk (--offload optimizer: the moments, a sharded master); not part of total()
  // --offload optimizer+params: bytes one micro-batch reads of the layers' shard slices (each
  // group's before its forward gather and again before its backward one: 2 x 4 bytes per shard
  // element; read only, the update's reads and writes are `offloaded`'s), and the largest
  // group's slice (an upper bound on a pass's first read, which no compute runs ahead of).
  double slice_reads = 0, first_slice = 0;
  double total() const { return params + packed_base + grads + optimizer + activations + workspace; }
};

struct MemoryPrediction {
  std::vector<MemoryBreakdown> by_pp_rank;  // every tp and dp rank of a stage is alike
  std::vector<int64_t> params_by_pp_rank;   // Ψ of the rank's chunks (local, padded), unsharded
  // Of Ψ, the expert weights (nn::ParamInfo::expert >= 0): reduced over dp / ep, not dp.
  std::vector<int64_t> expert_params_by_pp_rank;
  // Elements AdamW updates on the rank (its shard under ZeRO >= 1; a LoRA run: the adapters').
  std::vector<int64_t> trained_by_pp_rank;
  // Bytes of values each dp rank's ZeRO-1/2 all-gather after an update carries, over the whole
  // Ψ: 4Ψ, or with the sharded master (parallel/zero_master.h) the 16-bit copy 2Ψ plus the
  // value-read parameters' fp32 values 4Ψv.
  std::vector<double> value_gather_bytes_by_pp_rank;
  int worst_pp_rank = 0;                    // largest total
  const MemoryBreakdown& worst() const { return by_pp_rank.at(static_cast<std::size_t>(worst_pp_rank)); }
};

MemoryPrediction predict_memory(const PlanRequest& request, const Layout& layout);

// Layers in [layer_begin, layer_end) whose declarations hold experts (nn::ParamDecl::expert):
// the mixture-of-experts layers, which exchange token rows under expert parallelism.
int moe_layer_count(const nn::ModelConfig& model, int layer_begin, int layer_end);

// The most micro-batches each local chunk of `rank` holds activations for at once under the
// schedule (walking its compute order: a Forward acquires, a Backward releases).
std::vector<int> peak_live_per_chunk(const pp::ScheduleSpec& spec, int rank);

// The model chunks pipeline rank `rank` holds in `layout` (V of them, local order), built as
// the engine builds them (tp rank 0; communication through a no-op stand-in that lives as
// long as the returned object). Nothing is allocated.
struct RankChunks {
  std::unique_ptr<nn::TensorParallelComm> tp_comm;
  std::vector<std::unique_ptr<nn::Model>> chunks;
};
RankChunks build_rank_chunks(const nn::ModelConfig& model, const Layout& layout, int rank,
                             nn::Recompute recompute = nn::Recompute::kNone, kernels::Precision precision = kernels::Precision::kFp32);

// A TensorParallelComm that moves nothing (all_gather/reduce_scatter copy this rank's own
// chunk): for counting parameters and timing one rank's compute of a tp slice.
std::unique_ptr<nn::TensorParallelComm> make_null_tp_comm(int rank, int size);

}  // namespace trident::plan
