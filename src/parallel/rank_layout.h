// What one rank holds in a dp x tp x pp layout of a model: its model chunks (V of them with the
// interleaved schedule), each with its DDP/ZeRO reducer over the rank's dp group and an AdamW
// over its shard; the tensor-parallel communicator, the pipeline executor, the tied-embedding
// group, the expert-parallel exchange, the fp16 loss scaler; and the activation working set a step and an evaluation share. Built once from the
// model config, the engine options and the batch; validated here (batch vs dp and micro-batches,
// sequence length, tp split, ZeRO stage, schedule). What a step does with it is train_step.h,
// eval_step.h and layout_state.h; none of them knows the model's family.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "comm/mesh.h"
#include "core/memory.h"
#include "nn/model.h"
#include "optim/adamw.h"
#include "optim/loss_scaler.h"
#include "parallel/ddp_reducer.h"
#include "parallel/engine_options.h"
#include "parallel/pipeline/executor.h"
#include "quant/packed_base.h"

namespace trident::parallel {

// Fills rows [row_begin, row_begin + rows) of the current global batch: ids and targets are
// (rows, T) row-major.
using BatchFn = std::function<void(int64_t row_begin, int64_t rows, int32_t* ids, int32_t* targets)>;

// A step's global batch and how it splits: global_batch rows of seq_len tokens, global_batch /
// dp rows per data-parallel rank, those in micro_batches micro-batches of micro_rows.
struct BatchSplit {
  int64_t global_batch = 0, seq_len = 0;
  int micro_batches = 1;
  int64_t rank_rows = 0, micro_rows = 0;  // derived by RankLayout
  int64_t tokens() const { return global_batch * seq_len; }
};

// One model chunk this rank holds, with its data-parallel reducer and optimizer.
struct ModelChunk {
  std::unique_ptr<nn::Model> model;
  // Before dp: destroyed after it (with --offload optimizer+params dp reads from its store).
  std::unique_ptr<optim::AdamW> adamw;
  std::unique_ptr<DataParallel> dp;  // null when dp == 1 and zero == 0; after model: destroyed first
  // QLoRA: the packed frozen base; the model's hooks (dequantize, then dp's). Declared last:
  // destroyed first, before the reducer it hands on to.
  std::unique_ptr<quant::PackedBase> packed;
  // What the model's hooks are: the packed base's, else the reducer's (null: none).
  nn::ModelHooks* hooks() const {
    return packed ? static_cast<nn::ModelHooks*>(packed.get()) : static_cast<nn::ModelHooks*>(dp.get());
  }
};

// The micro-batch inputs and activations of a step; evaluation reuses them.
struct StepBuffers {
  nn::ModelActivations acts;                   // pp == 1: the micro-batch loop's activations
  std::vector<nn::ModelActivations> eval_acts;  // pp > 1: per chunk, for evaluation
  std::vector<int32_t> ids, targets;            // pp == 1: one micro-batch
  std::vector<std::vector<int32_t>> mb_ids, mb_targets;  // pp > 1: the step's micro-batches
};

class RankLayout {
 public:
  RankLayout(comm::Mesh& mesh, const nn::ModelConfig& config, const EngineOptions& options,
             MemoryTracker& tracker, int64_t global_batch, int64_t seq_len, int micro_batches);
  ~RankLayout();
  RankLayout(const RankLayout&) = delete;
  RankLayout& operator=(const RankLayout&) = delete;

  comm::Mesh& mesh() { return mesh_; }
  const comm::Mesh& mesh() const { return mesh_; }
  const nn::ModelConfig& config() const { return config_; }
  const EngineOptions& options() const { return options_; }
  MemoryTracker& tracker() { return tracker_; }
  const BatchSplit& batch() const { return batch_; }
  // This rank's first row of the global batch.
  int64_t first_row() const { return mesh_.coord(comm::kDp) * batch_.rank_rows; }

  std::vector<ModelChunk>& chunks() { return chunks_; }
  const std::vector<ModelChunk>& chunks() const { return chunks_; }
  pp::PipelineExecutor* executor() { return executor_.get(); }  // null when pp == 1
  // First and last pipeline stage with this rank's tp coordinate (all dp): where the tied
  // embedding's two gradients are summed. Null unless pp > 1, a parameter is tied and this
  // rank is on one of those stages.
  comm::Communicator* tied_group() { return tied_group_.get(); }
  StepBuffers& buffers() { return buffers_; }

  // Whether this rank's copy of parameter `id` of `chunk` is the one counted (grad norm) and
  // saved: its tp owner, and not the last stage's mirror of a tied parameter.
  static bool owns(const ModelChunk& chunk, int id);
  // The coordinate over which this parameter's copies are replicas (dp, or edp for an expert
  // under expert parallelism): the copy at 0 is counted and saved.
  int replica_coord(const nn::ParamInfo& info) const;
  // MoE: the auxiliary losses' weights (per (layer, sequence) balance term, per (layer, token)
  // z term; nn/moe_loss.h), times `scale` (fp16's loss scale; 1 otherwise).
  nn::MoeLossWeights moe_loss_weights(double scale) const {
    return {static_cast<float>(aux_loss_weight_ * scale), static_cast<float>(z_loss_weight_ * scale)};
  }
  // --precision fp16's dynamic loss scaler; null in the other precisions.
  optim::LossScaler* loss_scaler() { return loss_scaler_ ? &*loss_scaler_ : nullptr; }
  const optim::LossScaler* loss_scaler() const { return loss_scaler_ ? &*loss_scaler_ : nullptr; }
  // Restores a checkpointed scaler state (fp16 only; throws trident::Error otherwise).
  void restore_loss_scaler(const optim::LossScalerState& state);
  // This rank computes losses (last stage, tp rank 0); others' loss sums are not counted.
  bool holds_loss() const;
  // --precision bf16: the bf16 weight copies the matmuls read (nn/bf16_weights.h), made from
  // the fp32 master values by begin_weight_copies -- every chunk's flat copy, or under ZeRO-3
  // one per gathered group from then on -- and dropped by end_weight_copies. Rounded to
  // nearest even, or with --stochastic-rounding keyed by (the run's seed, the updates applied
  // so far, name, logical index). Under ZeRO-1/2's sharded master (zero_master.h; bf16 and
  // fp16) the reducer's persistent 16-bit copy instead, remade here (a dp collective) only
  // after the values changed. Nothing in fp32, nor otherwise in fp16.
  void begin_weight_copies();
  void end_weight_copies();
  // The seed keying the stochastic rounding (the run's --seed; the trainer sets it).
  void set_rounding_seed(uint64_t seed) { rounding_seed_ = seed; }
  std::string describe() const;

 private:
  void build_pipeline(const pp::ScheduleSpec& spec);

  comm::Mesh& mesh_;
  nn::ModelConfig config_;
  EngineOptions options_;
  MemoryTracker& tracker_;
  BatchSplit batch_;
  std::unique_ptr<nn::TensorParallelComm> tp_comm_;
  std::unique_ptr<nn::ExpertParallelComm> ep_comm_;  // before chunks_: their MoE layers use it
  std::optional<optim::LossScaler> loss_scaler_;      // fp16 only
  double aux_loss_weight_ = 0.0, z_loss_weight_ = 0.0;
  std::vector<ModelChunk> chunks_;
  std::unique_ptr<pp::PipelineExecutor> executor_;
  std::unique_ptr<comm::Communicator> tied_group_;
  StepBuffers buffers_;
  std::string partition_text_;  // pp > 1: which layers each stage holds, for start-up logs
  uint64_t rounding_seed_ = 0;
};

// begin_weight_copies for the scope's life (a train step, an evaluation), then end_weight_copies.
class WeightCopyScope {
 public:
  explicit WeightCopyScope(RankLayout& L) : L_(L) { L_.begin_weight_copies(); }
  ~WeightCopyScope() { L_.end_weight_copies(); }
  WeightCopyScope(const WeightCopyScope&) = delete;
  WeightCopyScope& operator=(const WeightCopyScope&) = delete;

 private:
  RankLayout& L_;
};

}  // namespace trident::parallel
