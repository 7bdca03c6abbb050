// The training engine: one rank's share of a dp x tp x pp layout of the model, and the step
// that composes them. Micro-batches (or the pipeline schedule) run forward and backward,
// gradients are synchronised over dp, the tied embedding's gradient is summed between the
// first and last pipeline stage, the global gradient norm counts every unique element once,
// and AdamW (optionally ZeRO-sharded) updates the weights. Data loading, metrics and
// checkpoint files are left to train/.
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
#include "parallel/pipeline/executor.h"

namespace trident::parallel {

struct EngineOptions {
  int zero = 0;                  // ZeRO stage over dp (0..3)
  std::string schedule = "1f1b";  // pipeline schedule when pp > 1
  int micro_batches = 1;         // per step per dp rank
  int virtual_stages = 1;
  bool balance_stages = false;   // pp: split layers by estimated cost (see Engine's constructor)
  bool sequence_parallel = false;
  nn::Recompute recompute = nn::Recompute::kNone;  // activation recomputation
  kernels::Precision precision = kernels::Precision::kFp32;  // of every matmul
  // Dynamic loss scaling, used when precision is fp16 (optim/loss_scaler.h).
  optim::LossScalerConfig loss_scaler;
  double bucket_mb = 25.0;       // DDP gradient bucket size
  bool overlap = true;           // overlap gradient allreduce with backward
  optim::AdamWConfig adamw;
  optim::OffloadOptions offload;  // where the AdamW moments live (optim/moment_store.h)
  double grad_clip = 1.0;        // 0: off
};

// Fills rows [row_begin, row_begin + rows) of the current global batch: ids and targets are
// (rows, T) row-major.
using BatchFn = std::function<void(int64_t row_begin, int64_t rows, int32_t* ids, int32_t* targets)>;

struct StepStats {
  double loss = 0.0;       // mean over every token of the global batch
  double grad_norm = 0.0;  // global L2 norm before clipping
  // Mixture of experts: the load-balancing loss (unweighted) averaged over every layer and
  // every sequence of the global batch; 0 for dense models. Not part of `loss`.
  double aux_loss = 0.0;
  // Mixture of experts: (n_layer, E) tokens of the global batch routed to each layer's experts
  // (each token counted once per expert it reached, so a layer's row sums to k x tokens);
  // empty for dense models. Equal in every layout when routing is.
  std::vector<int64_t> expert_load;
  float clip_scale = 1.0f;
  double comm_wait_s = 0.0;  // time blocked on dp communication (exposed, not overlapped)
  // The loss or the grad norm was not finite somewhere in the world: no rank applied the
  // update (weights, AdamW moments and step counter unchanged). What to do next is the
  // caller's policy (train/nonfinite_policy.h).
  bool skipped = false;
  // --precision fp16: the loss scale this step's backward ran with (0 otherwise), and whether
  // the step was skipped because its scaled gradients overflowed while its loss was finite
  // above the minimum scale (the scaler's business, not a poisoned step: the scale is lowered
  // for the next step).
  double loss_scale = 0.0;
  bool overflow = false;
};

class Engine {
 public:
  // global_batch rows of seq_len tokens per step, split over dp and then micro-batches.
  Engine(comm::Mesh& mesh, const nn::ModelConfig& config, const EngineOptions& options,
         MemoryTracker& tracker, int64_t global_batch, int64_t seq_len);
  ~Engine();

  void initialize(uint64_t seed);  // GPT-2 init from the logical tensors
  StepStats train_step(const BatchFn& batch, float lr);
  // Mean token loss of one global batch (no gradients). Same on every rank.
  double eval_loss(const BatchFn& batch);

  // ---- layout-free state: logical tensors by Hugging Face name ----
  // Collective over the world: every rank calls with the same names in the same order; the
  // full logical tensor arrives on world rank 0 (others' `out` is untouched, may be null).
  void gather_param(const std::string& name, const Shape& logical_shape, float* out);
  // kind 0: exp_avg, 1: exp_avg_sq
  void gather_optimizer_state(const std::string& name, const Shape& logical_shape, int kind,
                              float* out);
  // Every rank passes the full logical tensor and keeps its slice (in every chunk that holds
  // the parameter: the tied embedding lives on the first and the last stage). Not collective.
  void load_param(const std::string& name, const float* logical);
  void load_optimizer_state(const std::string& name, int kind, const float* logical);
  // Updates applied so far (AdamW's step counter; a skipped step does not count).
  int64_t optimizer_step() const;
  void set_optimizer_step(int64_t t);
  // --precision fp16's dynamic loss scaler; null in the other precisions.
  const optim::LossScaler* loss_scaler() const { return loss_scaler_ ? &*loss_scaler_ : nullptr; }
  // Restores a checkpointed scaler state (fp16 only; throws trident::Error otherwise).
  void restore_loss_scaler(const optim::LossScalerState& state);
  // Collective over the world: every rank scans the weights and AdamW moments it holds (its
  // shards under ZeRO) for NaN/inf. Returns, on every rank alike, the first offender of the
  // lowest such rank ("h.3.mlp.c_fc.weight exp_avg_sq, element 17, on rank 2"), or "" when
  // all are finite.
  std::string find_nonfinite_state();

  const nn::ModelConfig& config() const { return config_; }
  // This rank's first model chunk (the whole model when pp == 1).
  nn::Model& model() { return *chunks_.front().model; }
  int num_chunks() const { return static_cast<int>(chunks_.size()); }
  nn::Model& chunk_model(int c) { return *chunks_.at(static_cast<std::size_t>(c)).model; }
  comm::Mesh& mesh() { return mesh_; }
  MemoryTracker& tracker() { return tracker_; }
  int64_t micro_batch_rows() const { return micro_rows_; }
  int micro_batches() const { return micro_batches_; }
  int64_t seq_len() const { return seq_len_; }
  bool is_output_rank() const { return mesh_.rank() == 0; }
  std::string describe() const;
  // The dp/ZeRO reducer of chunk c (null when dp == 1 and zero == 0).
  DataParallel* data_parallel(int c = 0) { return chunks_.at(static_cast<std::size_t>(c)).dp.get(); }
  // The pipeline executor (null when pp == 1).
  pp::PipelineExecutor* pipeline() { return executor_.get(); }

 private:
  // One model chunk this rank holds, with its data-parallel reducer and optimizer.
  struct Chunk {
    std::unique_ptr<nn::Model> model;
    std::unique_ptr<DataParallel> dp;  // after model: destroyed first
    std::unique_ptr<optim::AdamW> adamw;
  };
  // The chunk and id of `name` whose copy this rank counts and saves; chunk null if none.
  struct OwnedParam {
    Chunk* chunk = nullptr;
    int id = -1;
  };
  OwnedParam owned_param(const std::string& name);
  // Chunk c's AdamW moments (kind 0: exp_avg, 1: exp_avg_sq) of parameter `id` that this rank
  // holds: `count` elements from the parameter's local index `local_begin`, which is
  // `store_begin` in the moment store (in memory or offloaded); read into `data` when `read`.
  struct MomentSlice {
    std::vector<float> data;
    int64_t local_begin, count, store_begin;
  };
  MomentSlice moments_of(Chunk& c, int id, int kind, bool read = true);
  // Sum of squares of this rank's gradient elements that no other rank also counts.
  double local_unique_grad_sumsq() const;
  // Whether this rank's copy of parameter `id` of chunk `c` is the one counted/saved.
  bool owns_for_reduction(const Chunk& c, int id) const;
  // The coordinate over which this parameter's copies are replicas (dp, or edp for an expert
  // under expert parallelism): the copy at 0 is counted and saved.
  int replica_coord(const nn::ParamInfo& info) const;
  double reduce_loss(double local_loss_sum);
  bool holds_loss() const;  // this rank computes losses (last stage, tp rank 0)
  void sum_tied_embedding_grads();
  double pipeline_eval_micro_batch(const int32_t* ids, const int32_t* targets);

  comm::Mesh& mesh_;
  nn::ModelConfig config_;
  EngineOptions options_;
  MemoryTracker& tracker_;
  int64_t global_batch_, seq_len_, rank_rows_, micro_rows_;
  int micro_batches_;
  std::unique_ptr<nn::TensorParallelComm> tp_comm_;
  std::optional<optim::LossScaler> loss_scaler_;  // fp16 only
  double aux_loss_weight_ = 0.0;  // MoE: per-layer-per-sequence weight before loss scaling
  std::unique_ptr<nn::ExpertParallelComm> ep_comm_;
  std::vector<Chunk> chunks_;
  std::unique_ptr<pp::PipelineExecutor> executor_;
  // Ranks of the first and last pipeline stage with this rank's tp coordinate (all dp): where
  // the tied embedding's two gradients are summed. Null unless pp > 1 and this rank is on one.
  std::unique_ptr<comm::Communicator> tied_group_;
  MPI_Comm tied_comm_ = MPI_COMM_NULL;
  nn::ModelActivations acts_;                   // pp == 1: the micro-batch loop's activations
  std::vector<nn::ModelActivations> eval_acts_;  // pp > 1: per chunk, for evaluation
  std::string partition_text_;  // pp > 1: which layers each stage holds, for start-up logs
  std::vector<int32_t> ids_, targets_;
  std::vector<std::vector<int32_t>> mb_ids_, mb_targets_;  // pp > 1: the step's micro-batches
};

}  // namespace trident::parallel
