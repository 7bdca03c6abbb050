// The training engine: a thin composition of one rank's layout (rank_layout.h: what the rank
// holds), the training step (train_step.h), evaluation (eval_step.h) and the layout-free state
// (layout_state.h: logical tensors in and out, for checkpoints). It knows no model family: the
// model's declaration (nn/architecture.h) decides shapes, ties and costs. Data loading,
// metrics and checkpoint files are left to train/.
#pragma once

#include <cstdint>
#include <string>

#include "parallel/engine_options.h"
#include "parallel/eval_step.h"
#include "parallel/layout_state.h"
#include "parallel/rank_layout.h"
#include "parallel/train_step.h"

namespace trident::parallel {

class Engine {
 public:
  // global_batch rows of seq_len tokens per step, split over dp and then into micro_batches.
  Engine(comm::Mesh& mesh, const nn::ModelConfig& config, const EngineOptions& options,
         MemoryTracker& tracker, int64_t global_batch, int64_t seq_len, int micro_batches)
      : layout_(mesh, config, options, tracker, global_batch, seq_len, micro_batches) {}

  void initialize(uint64_t seed) { initialize_params(layout_, seed); }
  // The run's seed, which keys --stochastic-rounding (rank_layout.h); 0 until set.
  void set_rounding_seed(uint64_t seed) { layout_.set_rounding_seed(seed); }
  StepStats train_step(const BatchFn& batch, float lr) { return parallel::train_step(layout_, batch, lr); }
  // Mean token loss of one global batch (no gradients). Same on every rank.
  double eval_loss(const BatchFn& batch) { return parallel::eval_loss(layout_, batch); }

  // ---- layout-free state (layout_state.h) ----
  void gather_param(const std::string& name, const Shape& logical_shape, float* out) {
    parallel::gather_param(layout_, name, logical_shape, out);
  }
  void gather_optimizer_state(const std::string& name, const Shape& logical_shape, int kind, float* out) {
    parallel::gather_optimizer_state(layout_, name, logical_shape, kind, out);
  }
  void load_param(const std::string& name, const float* logical) { parallel::load_param(layout_, name, logical); }
  void load_optimizer_state(const std::string& name, int kind, const float* logical) {
    parallel::load_optimizer_state(layout_, name, kind, logical);
  }
  void load_param_from(const std::string& name, const LogicalReader& read, int64_t piece = kLoadChunk) {
    parallel::load_param_from(layout_, name, read, piece);
  }
  void load_optimizer_state_from(const std::string& name, int kind, const LogicalReader& read,
                                 int64_t piece = kLoadChunk) {
    parallel::load_optimizer_state_from(layout_, name, kind, read, piece);
  }
  void load_packed_param(const nn::ParamDecl& decl, const quant::QuantMatrix& full) {
    parallel::load_packed_param(layout_, decl, full);
  }
  void check_packed_base() const { parallel::check_packed_base(layout_); }
  // Updates applied so far (AdamW's step counter; a skipped step does not count).
  int64_t optimizer_step() const { return parallel::optimizer_step(layout_); }
  void set_optimizer_step(int64_t t) { parallel::set_optimizer_step(layout_, t); }
  std::string find_nonfinite_state() { return parallel::find_nonfinite_state(layout_); }
  // --precision fp16's dynamic loss scaler; null in the other precisions.
  const optim::LossScaler* loss_scaler() const { return layout_.loss_scaler(); }
  // Restores a checkpointed scaler state (fp16 only; throws trident::Error otherwise).
  void restore_loss_scaler(const optim::LossScalerState& state) { layout_.restore_loss_scaler(state); }

  // ---- what the rank holds (rank_layout.h) ----
  RankLayout& layout() { return layout_; }
  const nn::ModelConfig& config() const { return layout_.config(); }
  // This rank's first model chunk (the whole model when pp == 1).
  nn::Model& model() { return chunk_model(0); }
  int num_chunks() const { return static_cast<int>(layout_.chunks().size()); }
  nn::Model& chunk_model(int c) { return *layout_.chunks().at(static_cast<std::size_t>(c)).model; }
  comm::Mesh& mesh() { return layout_.mesh(); }
  MemoryTracker& tracker() { return layout_.tracker(); }
  std::string describe() const { return layout_.describe(); }
  // The dp/ZeRO reducer of chunk c (null when dp == 1 and zero == 0).
  DataParallel* data_parallel(int c = 0) { return layout_.chunks().at(static_cast<std::size_t>(c)).dp.get(); }
  // The pipeline executor (null when pp == 1).
  pp::PipelineExecutor* pipeline() { return layout_.executor(); }

 private:
  RankLayout layout_;
};

}  // namespace trident::parallel
