// A decoder-only language model of any declared family (nn/architecture.h): token embedding
// (+ learned positions where the family has them), the family's layers, a final norm and the
// LM head (tied to the embedding or its own weight), with explicit forward/backward in
// stage-sized pieces (embed, blocks, head) so the pipeline executor can run a stage's share
// and the single-process run is just all pieces in order. This class knows parameters only by
// their declared role (ParamRole), never by name.
//
// Shapes: B batch, T sequence, C = n_embd, Vp padded vocabulary rows on this rank, N = B*T.
//
// Tensor parallelism (TpContext, tp > 1): the embedding is split by vocabulary rows
// (VocabParallelEmbedding: each rank looks up its rows, an allreduce sums them); the head
// computes this rank's (N, Vp) logit columns and the vocab-parallel cross-entropy
// (kernels/vocab_parallel.h) reduces max, sum-exp and the target logit over tp, so the full
// logits never exist; the head's input gradient is allreduced (identity forward, allreduce
// backward). With sequence parallelism the residual stream (stage input/output, residual_grad)
// holds only this rank's local_rows(N) token rows (see nn/tensor_parallel.h): the embedding
// reduce-scatters instead of allreducing, the final norm runs on local rows and is all-gathered
// before the head, and the head's input gradient is reduce-scattered.
//
// What the caller (engine) must do for tp: construct with TpContext{rank, size, comm,
// sequence_parallel}; count only parameters whose ParamInfo::tp_owner is set in the grad norm;
// count the loss of one tp rank (all hold the same). Nothing after backward: norm gradients
// under sequence parallelism and replicated key/value heads are summed over tp inside
// backward, before the group's after_group_backward hook.
// A pipeline stage exchanges local_rows(B*T) * C floats.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "core/memory.h"
#include "nn/bf16_weights.h"
#include "nn/layer.h"
#include "nn/model_config.h"
#include "nn/norm.h"
#include "nn/parameters.h"
#include "nn/recompute.h"
#include "nn/tensor_parallel.h"

namespace trident::nn {

// Which part of the model this rank holds (pipeline parallelism). The default is everything.
struct StageSpec {
  int layer_begin = 0;
  int layer_end = -1;          // exclusive; -1 = n_layer
  bool has_embedding = true;   // token (+ position) embedding lookup (first stage)
  bool has_head = true;        // final norm + LM head + loss (last stage)
};

// Everything one micro-batch's forward saves for its backward. Reused across steps.
struct ModelActivations {
  int64_t B = 0, T = 0;                  // capacity; a run may use fewer tokens
  Recompute recompute = Recompute::kNone;  // the model's mode when these were made
  kernels::Precision storage = kernels::Precision::kFp32;  // likewise, Model::operand_storage
  std::vector<int32_t> ids, targets;     // (B, T)
  std::vector<FloatBuffer> residual;     // [layer - layer_begin] (Nl, C): input of that layer;
                                         // the last entry is the stage output
  std::vector<std::unique_ptr<LayerActivations>> blocks;  // [layer - layer_begin]; empty
                                                          // under full recompute
  // (Nl, C) final norm output, head only: the head's products read it only as a matmul operand
  // (logits = lnf wte^T, d wte += dlogits^T lnf; ln_f's backward reads its input, mean and
  // rstd), so under bf16/fp16 it is saved in the matmuls' 16 bits (nn/saved_operand.h).
  SavedOperand lnf;
  FloatBuffer lnf_mean, lnf_rstd;        // (Nl), (Nl) final norm  head only
  FloatBuffer logits;                    // (N, Vp)  head only; becomes dlogits in place
  FloatBuffer losses;                    // (N)  head only

  float* stage_input() { return residual.front().data(); }
  float* stage_output() { return residual.back().data(); }
};

class Model {
 public:
  Model(const ModelConfig& cfg, const TpContext& tp = {}, const StageSpec& stage = {});

  const ModelConfig& config() const { return cfg_; }
  const StageSpec& stage() const { return stage_; }
  const TpContext& tp() const { return tp_; }
  ParameterSet& params() { return params_; }
  const ParameterSet& params() const { return params_; }
  int64_t padded_vocab_local() const { return vocab_local_; }
  // Token rows of N this rank holds in the residual stream: N, or its sequence-parallel share.
  // Pipeline send/recv and residual_grad() carry local_rows(B*T) * C floats.
  int64_t local_rows(int64_t N) const { return tp_.local_rows(N); }
  void set_hooks(ModelHooks* hooks) { hooks_ = hooks; }
  // Activation recomputation (nn/recompute.h); set before make_activations, which allocates
  // accordingly (activations made under another mode are rejected).
  void set_recompute(Recompute r) { recompute_ = r; }
  Recompute recompute() const { return recompute_; }
  // Mixture of experts: the load-balancing loss's weight per (layer, sequence) term, i.e.
  // coef / (MoE layers * sequences in the global batch), and the z-loss's per (layer, token)
  // term; see nn/moe_loss.h. 0 (default): off.
  void set_moe_loss_weights(const MoeLossWeights& w) {
    for (auto& b : blocks_) b->set_moe_loss_weights(w);
  }
  // This stage's unweighted auxiliary terms since the last call (Layer::take_moe_loss_sums).
  MoeLossSums take_moe_loss_sums() {
    MoeLossSums s;
    for (auto& b : blocks_) s += b->take_moe_loss_sums();
    return s;
  }
  // Adds this stage's per-expert token counts since the last call (Layer::take_expert_load)
  // into load (n_layer, E), at the layers' global indices.
  void take_expert_load(std::vector<int64_t>& load) {
    for (std::size_t i = 0; i < blocks_.size(); ++i) {
      const std::vector<int64_t> l = blocks_[i]->take_expert_load();
      const std::size_t at = (static_cast<std::size_t>(stage_.layer_begin) + i) * l.size();
      for (std::size_t e = 0; e < l.size(); ++e) load.at(at + e) += l[e];
    }
  }
  // Adds this stage's routing hashes since the last call (Layer::take_routing_hash) into
  // hash (n_layer), at the layers' global indices.
  void take_routing_hash(std::vector<uint64_t>& hash) {
    for (std::size_t i = 0; i < blocks_.size(); ++i) {
      hash.at(static_cast<std::size_t>(stage_.layer_begin) + i) += blocks_[i]->take_routing_hash();
    }
  }
  // Aux-loss-free balancing (nn/moe_router.h; ModelConfig::has_router_bias): every MoE layer's
  // selection bias, (moe_layers, E) fp32 from layer first_k_dense on -- the whole model's on every stage, so that each rank
  // holds the full table, updated alike from the world's counts; empty when off.
  const std::vector<float>& router_bias() const { return router_bias_; }
  void set_router_bias(const std::vector<float>& bias);
  // After an applied optimizer step: each MoE layer's bias from load (moe_layers, E), the global
  // batch's tokens per expert (StepStats::expert_load, which holds the MoE layers' rows only).
  void update_router_bias(const std::vector<int64_t>& load);
  // The precision of every matmul of the layers and the head (kernels/matmul_engine.h).
  void set_precision(kernels::Precision p) {
    weight_copy_.reset();
    *matmul_ = kernels::MatmulEngine(p);
  }
  const kernels::MatmulEngine& matmul() const { return *matmul_; }
  // How the activations read only as matmul operands are saved (nn/saved_operand.h): in the
  // matmuls' 16 bits under bf16/fp16 (bitwise the same results as fp32 storage, half the
  // bytes), fp32 under fp32. The switch (on by default) exists to check that equality.
  void set_store_16bit_operands(bool on) { store16_ = on; }
  kernels::Precision operand_storage() const { return store16_ ? matmul_->precision() : kernels::Precision::kFp32; }
  kernels::MatmulEngine& matmul() { return *matmul_; }
  // --precision bf16: rounds the fp32 values into the bf16 copy the matmuls read from now until
  // end_weight_copy (nn/bf16_weights.h; the engine's train step and evaluation bracket
  // themselves with these). Nothing in fp32 / fp16, or when the flat values are released
  // (ZeRO-3 copies each gathered group instead).
  void begin_weight_copy(const WeightRounding& r);
  void end_weight_copy() { weight_copy_.unregister(); }

  // Allocates parameters and gradients (the flat buffers `flat` asks for; ZeRO 2-3 keep shards
  // instead); then initialise or load them.
  void allocate(MemoryTracker& tracker, FlatBuffers flat = {});
  ModelActivations make_activations(MemoryTracker& tracker, int64_t B, int64_t T) const;
  // Bytes make_activations allocates for one micro-batch under the recompute mode and the
  // operand storage (the analytic formula of docs/memory.md).
  int64_t activation_bytes(int64_t B, int64_t T) const;
  // Activation bytes the model itself allocates once, whatever the micro-batches in flight,
  // at its first forward of B*T tokens: the one attention core (selective) or the one layer
  // working set plus the rerun's (Nl, C) output (full); 0 without recompute.
  int64_t recompute_bytes(int64_t B, int64_t T) const;
  // Floats of gradient scratch a step of N = B*T tokens allocates (residual gradient, the
  // shared and the layers' scratch, the vocab-parallel loss sums).
  int64_t workspace_floats(int64_t N) const;

  // ---- pieces, in execution order; each works on acts with B*T tokens (B, T given) ----
  void embed_forward(ModelActivations& acts, const int32_t* ids, int64_t B, int64_t T);
  void blocks_forward(ModelActivations& acts, int64_t B, int64_t T);
  // Final norm, logits, loss; then backward through the head into residual_grad().
  // dloss scales each token's loss gradient (1 / tokens in the global batch). Returns the
  // sum of the token losses of this micro-batch.
  double head_forward_backward(ModelActivations& acts, const int32_t* targets, int64_t B,
                               int64_t T, float dloss);
  // Blocks backward: residual_grad() holds d loss / d stage output on entry and
  // d loss / d stage input on exit.
  void blocks_backward(ModelActivations& acts, int64_t B, int64_t T);
  void embed_backward(ModelActivations& acts, int64_t B, int64_t T);
  float* residual_grad() { return dres_.data(); }
  // residual_grad() sized for B*T tokens, allocated if needed: where a pipeline stage without
  // the head receives d loss / d stage output before blocks_backward.
  float* prepare_residual_grad(int64_t B, int64_t T) {
    ensure_scratch(B * T);
    return dres_.data();
  }

  // ---- whole model on one rank ----
  double forward_backward(ModelActivations& acts, const int32_t* ids, const int32_t* targets,
                          int64_t B, int64_t T, float dloss);
  // Forward only, the last stage's share: final norm, logits and the sum of the token losses of
  // acts' stage output (evaluation; no gradients).
  double head_loss(ModelActivations& acts, const int32_t* targets, int64_t B, int64_t T);
  // Forward only: sum of token losses (evaluation).
  double forward_loss(ModelActivations& acts, const int32_t* ids, const int32_t* targets,
                      int64_t B, int64_t T);
  // Forward only: logits (N, Vp) left in acts.logits (padding columns included; with tp, this
  // rank's vocabulary columns).
  const float* forward_logits(ModelActivations& acts, const int32_t* ids, int64_t B, int64_t T);
  // Forward only: logits (Vp floats per position) of the last position of each row, for
  // generation; returns a pointer into acts.logits of row b's last position. With tp the
  // slices are all-gathered (padded vocabulary, global order) into a model-owned buffer.
  const float* forward_last_logits(ModelActivations& acts, const int32_t* ids, int64_t B, int64_t T);

 private:
  void ensure_scratch(int64_t N);
  void head_forward(ModelActivations& acts, int64_t N);
  // The final norm (LayerNorm or RMSNorm, as declared) over `rows` rows.
  // The head's matmul input: ln_f's saved output, or its rows all-gathered under sequence
  // parallelism (into scratch_.gathered, as 16-bit words when saved so).
  kernels::ActOperand head_input(const ModelActivations& acts, int64_t N);
  void final_norm_forward(float* out, float* mean, float* rstd, const float* x, int64_t rows) const;
  // Vocab-parallel loss (tp > 1): losses and dlogits in place, as the single-process kernel.
  void vocab_parallel_loss(ModelActivations& acts, const int32_t* targets, int64_t N, float dloss);
  // Sequence parallelism needs the (N, C) gather buffers in forward too.
  void hook_forward(int group) { if (hooks_) hooks_->before_group_forward(group); }
  void hook_before_backward(int group) { if (hooks_) hooks_->before_group_backward(group); }
  void hook_after_backward(int group) { if (hooks_) hooks_->after_group_backward(group); }
  // The buffers recompute_bytes counts, for at least B rows of T tokens.
  void ensure_recompute(int64_t B, int64_t T);
  // Where layer i's forward writes what its backward reads: the micro-batch's own, or the
  // shared working set under full recompute.
  LayerActivations& layer_activations(ModelActivations& acts, std::size_t i);
  void check_activations(const ModelActivations& acts) const;
  // The first global layer index of each run of alike layers (Architecture::layer_runs) in
  // this stage, and the gradient scratch the stage's layers share (the largest layer's).
  std::vector<int> stage_run_layers() const;
  int64_t layer_scratch_floats(int64_t N) const;

  ModelConfig cfg_;
  TpContext tp_;
  StageSpec stage_;
  int64_t vocab_local_ = 0;
  ParameterSet params_;
  // Parameters by role (-1 where this stage or family has none). head_w_ is the LM head's
  // weight: the token embedding (or its tied copy) when tied, lm_head otherwise.
  int wte_ = -1, wpe_ = -1, lnf_w_ = -1, lnf_b_ = -1, head_w_ = -1;
  int embed_group_ = -1, head_group_ = -1;
  std::optional<Norm> final_norm_;  // the head stage's
  std::vector<std::unique_ptr<Layer>> blocks_;
  std::vector<int> block_groups_;
  std::vector<float> router_bias_;  // (MoE layers, E), from layer first_k_dense; never resized after construction (the layers point into it)
  MemoryTracker* tracker_ = nullptr;
  // On the heap so scratch_.matmul stays valid when the model moves.
  std::unique_ptr<kernels::MatmulEngine> matmul_;
  Bf16WeightCopy weight_copy_;  // after matmul_: unregisters before the engine goes
  FloatBuffer dres_;  // (N, C) residual-stream gradient
  SharedScratch scratch_;
  int64_t scratch_tokens_ = 0;
  FloatBuffer ce_sums_;      // (3N) vocab-parallel loss: row max, sum-exp, target logit
  FloatBuffer last_logits_;  // C + 2 + Vl + Vp: generation with tp
  ModelHooks* hooks_ = nullptr;
  Recompute recompute_ = Recompute::kNone;
  bool store16_ = true;  // set_store_16bit_operands
  // Recompute's model-owned buffers (kActivations), sized for recompute_B_ x recompute_T_.
  // full: one working set per run of alike layers in the stage; rerun_of_[i] is block i's
  std::vector<std::unique_ptr<LayerActivations>> rerun_acts_;
  std::vector<std::size_t> rerun_of_;
  FloatBuffer rerun_out_;                         // full: (Nl, C) the rerun's discarded output
  FloatBuffer attention_core_;                    // selective: lent to the running layer
  int64_t recompute_B_ = 0, recompute_T_ = 0;
};

}  // namespace trident::nn
