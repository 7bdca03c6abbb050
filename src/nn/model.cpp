// Decoder model assembly from an architecture's declaration, forward and backward.
#include "nn/model.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "core/check.h"
#include "kernels/kernels.h"
#include "kernels/vocab_parallel.h"
#include "nn/architecture.h"
#include "nn/moe_router.h"
#include "nn/tp_region.h"

namespace trident::nn {

Model::Model(const ModelConfig& cfg, const TpContext& tp, const StageSpec& stage)
    : cfg_(cfg), tp_(tp), stage_(stage), matmul_(std::make_unique<kernels::MatmulEngine>()) {
  cfg_.validate();
  scratch_.matmul = matmul_.get();
  if (stage_.layer_end < 0) stage_.layer_end = cfg_.n_layer;
  TRI_CHECK(stage_.layer_begin >= 0 && stage_.layer_begin <= stage_.layer_end &&
                stage_.layer_end <= cfg_.n_layer,
            "stage layers [{}, {}) out of range for n_layer {}", stage_.layer_begin,
            stage_.layer_end, cfg_.n_layer);
  TRI_CHECK(tp_.size >= 1 && tp_.rank >= 0 && tp_.rank < tp_.size, "bad tp rank {} of {}",
            tp_.rank, tp_.size);
  TRI_CHECK(tp_.size == 1 || tp_.comm != nullptr, "tensor parallelism needs a communicator");
  TRI_CHECK(tp_.comm == nullptr || (tp_.comm->size() == tp_.size && tp_.comm->rank() == tp_.rank),
            "TpContext says tp rank {} of {} but its communicator is rank {} of {}", tp_.rank,
            tp_.size, tp_.comm ? tp_.comm->rank() : 0, tp_.comm ? tp_.comm->size() : 0);
  check_tensor_parallel_split(cfg_, tp_.size);
  const Architecture& arch = architecture(cfg_.family);
  const int64_t Vp = cfg_.padded_vocab(tp_.size);
  vocab_local_ = Vp / tp_.size;

  const std::vector<ParamDecl> embedding = arch.embedding_params(cfg_);
  if (stage_.has_embedding) {
    embed_group_ = params_.begin_group("embeddings", GroupRole::kEmbedding);
    add_declared(params_, embedding, cfg_, tp_.rank, tp_.size);
  }
  for (int l = stage_.layer_begin; l < stage_.layer_end; ++l) {
    block_groups_.push_back(params_.begin_group(fmt::format("layer.{}", l)));
    blocks_.push_back(arch.make_layer(params_, cfg_, tp_, l));
  }
  if (stage_.has_head) {
    head_group_ = params_.begin_group("head", GroupRole::kHead);
    add_declared(params_, arch.head_params(cfg_), cfg_, tp_.rank, tp_.size);
    // A tied head on a last stage without the embedding: a second copy of the embedding whose
    // gradient the pipeline sums with the first stage's every step.
    if (!stage_.has_embedding) {
      for (const ParamDecl& d : embedding) {
        if (!d.tied) continue;
        ParamInfo copy = shard_for_tp(d, cfg_, tp_.rank, tp_.size);
        copy.tied_copy = true;
        params_.add(std::move(copy));
      }
    }
  }
  if (cfg_.has_router_bias()) {
    // One row per MoE layer: row m is layer first_k_dense + m (the dense layers route nothing).
    router_bias_.assign(static_cast<std::size_t>(cfg_.moe_layers()) * static_cast<std::size_t>(cfg_.n_experts), 0.0f);
    for (std::size_t i = 0; i < blocks_.size(); ++i) {
      const int layer = stage_.layer_begin + static_cast<int>(i);
      if (!cfg_.layer_is_moe(layer)) continue;
      const auto row = static_cast<std::size_t>(layer - cfg_.first_k_dense);
      blocks_[i]->set_router_bias(router_bias_.data() + row * static_cast<std::size_t>(cfg_.n_experts));
    }
  }
  wte_ = params_.find_role(ParamRole::kTokenEmbedding);
  wpe_ = params_.find_role(ParamRole::kPositionEmbedding);
  lnf_w_ = params_.find_role(ParamRole::kFinalNormWeight);
  lnf_b_ = params_.find_role(ParamRole::kFinalNormBias);
  head_w_ = cfg_.tie_word_embeddings ? wte_ : params_.find_role(ParamRole::kLmHead);
  if (lnf_w_ >= 0) final_norm_.emplace(params_, lnf_w_, lnf_b_, static_cast<float>(cfg_.norm_eps));
  TRI_CHECK(!stage_.has_head || head_w_ >= 0, "{}: the head stage holds no LM head weight",
            cfg_.describe());
}

void Model::set_router_bias(const std::vector<float>& bias) {
  TRI_CHECK(bias.size() == router_bias_.size(), "{}: a router bias of {} floats for a table of {} (MoE layers x E; "
            "empty when router_bias_update_rate is 0)", cfg_.describe(), bias.size(), router_bias_.size());
  std::copy(bias.begin(), bias.end(), router_bias_.begin());  // in place: the layers point into it
}

void Model::update_router_bias(const std::vector<int64_t>& load) {
  if (router_bias_.empty()) return;
  const auto E = static_cast<std::size_t>(cfg_.n_experts);
  TRI_CHECK(load.size() == router_bias_.size(), "router bias update: {} expert counts for a table of {}", load.size(),
            router_bias_.size());
  for (std::size_t l = 0; l < static_cast<std::size_t>(cfg_.moe_layers()); ++l) {
    nn::update_router_bias(router_bias_.data() + l * E, load.data() + l * E, cfg_.n_experts, cfg_.router_bias_update_rate);
  }
}

void Model::allocate(MemoryTracker& tracker, FlatBuffers flat) {
  tracker_ = &tracker;
  params_.allocate(tracker, flat);
}

void Model::begin_weight_copy(const WeightRounding& r) {
  if (matmul_->precision() != kernels::Precision::kBf16 || params_.values().empty()) return;
  TRI_CHECK(tracker_ != nullptr, "begin_weight_copy before allocate");
  weight_copy_.fill(*tracker_, *matmul_, params_, 0, params_.total_numel(), params_.values().data(), r);
}

std::vector<int> Model::stage_run_layers() const {
  // The first layer of each run of alike layers (Architecture::layer_runs) in this stage.
  std::vector<int> firsts;
  for (const Architecture::LayerRun& r : architecture(cfg_.family).layer_runs(cfg_)) {
    const int lo = std::max(r.begin, stage_.layer_begin), hi = std::min(r.end, stage_.layer_end);
    if (lo < hi) firsts.push_back(lo);
  }
  return firsts;
}

int64_t Model::activation_bytes(int64_t B, int64_t T) const {
  const int64_t N = B * T, C = cfg_.n_embd, Nl = local_rows(N);
  const int64_t layers = stage_.layer_end - stage_.layer_begin;
  const Architecture& arch = architecture(cfg_.family);
  const kernels::Precision storage = operand_storage();
  // Every layer's input and the stage output (the residual stream) are always kept, in fp32.
  int64_t total = 4 * (layers + 1) * Nl * C;
  for (const Architecture::LayerRun& r : arch.layer_runs(cfg_)) {
    const int lo = std::max(r.begin, stage_.layer_begin), hi = std::min(r.end, stage_.layer_end);
    if (lo >= hi) continue;
    const int64_t layer = arch.layer_activation_bytes(cfg_, tp_.size, B, T, tp_.sp() ? Nl : -1, lo, storage);
    switch (recompute_) {
      case Recompute::kNone: total += (hi - lo) * layer; break;
      case Recompute::kSelective:
        total += (hi - lo) * (layer - 4 * arch.attention_core_floats(cfg_, tp_.size, B, T, lo));
        break;
      case Recompute::kFull: break;  // the layers' working set is the model's (recompute_bytes)
    }
  }
  // The head: ln_f's output (a matmul-only operand, saved_operand.h), its mean and rstd, the
  // logits and the per-token losses.
  if (stage_.has_head) total += SavedOperand::bytes(storage, Nl * C) + 4 * (2 * Nl + N * vocab_local_ + N);
  return total;
}

int64_t Model::recompute_bytes(int64_t B, int64_t T) const {
  if (blocks_.empty()) return 0;
  const int64_t Nl = local_rows(B * T);
  const Architecture& arch = architecture(cfg_.family);
  int64_t bytes = 0;
  for (const int l : stage_run_layers()) {
    switch (recompute_) {
      case Recompute::kNone: break;
      // One attention-core buffer lent to each layer in turn: the largest.
      case Recompute::kSelective:
        bytes = std::max(bytes, 4 * arch.attention_core_floats(cfg_, tp_.size, B, T, l));
        break;
      // One working set per kind of layer in the stage (a dense layer's lacks the experts').
      case Recompute::kFull:
        bytes += arch.layer_activation_bytes(cfg_, tp_.size, B, T, tp_.sp() ? Nl : -1, l, operand_storage());
        break;
    }
  }
  return recompute_ == Recompute::kFull ? bytes + 4 * Nl * cfg_.n_embd : bytes;
}

int64_t Model::layer_scratch_floats(int64_t N) const {
  int64_t layer = 0;  // shared by the layers (one backward at a time): the largest
  for (const int l : stage_run_layers()) {
    layer = std::max(layer, architecture(cfg_.family).layer_scratch_floats(cfg_, tp_.size, N, l));
  }
  return layer;
}

int64_t Model::workspace_floats(int64_t N) const {
  const int64_t C = cfg_.n_embd;
  const int64_t layer = layer_scratch_floats(N);
  int64_t w = N * C + SharedScratch::floats(N, C, layer, tp_.sp() ? tp_.rows(N).count : -1);
  if (tp_.size > 1) w += 3 * N;
  return w + lora_scratch_floats(cfg_, tp_.size, N);
}

ModelActivations Model::make_activations(MemoryTracker& tracker, int64_t B, int64_t T) const {
  TRI_CHECK(B > 0 && T > 0, "batch ({}) and sequence length ({}) must be positive", B, T);
  TRI_CHECK(T <= cfg_.n_positions,
            "sequence length {} exceeds the model's n_positions {} (the position table); use "
            "--seq-len <= {}",
            T, cfg_.n_positions, cfg_.n_positions);
  ModelActivations a;
  a.B = B, a.T = T;
  a.recompute = recompute_;
  a.storage = operand_storage();
  const auto N = static_cast<std::size_t>(B * T);
  const auto Nl = static_cast<std::size_t>(local_rows(B * T));
  const auto C = static_cast<std::size_t>(cfg_.n_embd);
  a.ids.assign(N, 0);
  a.targets.assign(N, 0);
  const int layers = stage_.layer_end - stage_.layer_begin;
  for (int l = 0; l <= layers; ++l) a.residual.emplace_back(tracker, MemCategory::kActivations, Nl * C);
  for (int l = 0; l < layers && recompute_ != Recompute::kFull; ++l) {
    a.blocks.push_back(blocks_[static_cast<std::size_t>(l)]->make_activations(
        tracker, B, T, tp_.sp() ? static_cast<int64_t>(Nl) : -1, recompute_ == Recompute::kNone, a.storage));
  }
  if (stage_.has_head) {
    a.lnf = SavedOperand(tracker, a.storage, static_cast<int64_t>(Nl * C));
    a.lnf_mean = FloatBuffer(tracker, MemCategory::kActivations, Nl);
    a.lnf_rstd = FloatBuffer(tracker, MemCategory::kActivations, Nl);
    a.logits = FloatBuffer(tracker, MemCategory::kActivations, N * static_cast<std::size_t>(vocab_local_));
    a.losses = FloatBuffer(tracker, MemCategory::kActivations, N);
  }
  return a;
}

void Model::ensure_recompute(int64_t B, int64_t T) {
  if (recompute_ == Recompute::kNone || blocks_.empty()) return;
  if (B * T <= recompute_B_ * recompute_T_ && T <= recompute_T_) return;
  TRI_CHECK(tracker_ != nullptr, "Model::allocate() must be called before running the model");
  const int64_t Nl = local_rows(B * T);
  if (recompute_ == Recompute::kSelective) {
    const auto count = static_cast<std::size_t>(recompute_bytes(B, T) / 4);
    attention_core_ = FloatBuffer(*tracker_, MemCategory::kActivations, count);
  } else {
    // Layers of a run declare the same shapes: one working set per run fits all its layers.
    rerun_acts_.clear();
    rerun_of_.assign(blocks_.size(), 0);
    const std::vector<int> firsts = stage_run_layers();
    for (std::size_t k = 0; k < firsts.size(); ++k) {
      const auto first = static_cast<std::size_t>(firsts[k] - stage_.layer_begin);
      rerun_acts_.push_back(
          blocks_[first]->make_activations(*tracker_, B, T, tp_.sp() ? Nl : -1, true, operand_storage()));
      for (std::size_t i = first; i < blocks_.size(); ++i) rerun_of_[i] = k;
    }
    rerun_out_ = FloatBuffer(*tracker_, MemCategory::kActivations, static_cast<std::size_t>(Nl * cfg_.n_embd));
  }
  recompute_B_ = B, recompute_T_ = T;
}

LayerActivations& Model::layer_activations(ModelActivations& acts, std::size_t i) {
  return recompute_ == Recompute::kFull ? *rerun_acts_[rerun_of_[i]] : *acts.blocks[i];
}

void Model::check_activations(const ModelActivations& acts) const {
  TRI_CHECK(acts.recompute == recompute_,
            "activations were made for --recompute {} but the model runs --recompute {}",
            recompute_name(acts.recompute), recompute_name(recompute_));
  TRI_CHECK(acts.storage == operand_storage(),
            "activations were made to save matmul operands as {} but the model now saves them as {} (set the "
            "precision before make_activations)",
            kernels::precision_names()[static_cast<int>(acts.storage)],
            kernels::precision_names()[static_cast<int>(operand_storage())]);
}

namespace {
// Selective recompute: lends the model's one attention-core buffer to the activations of the
// layer that runs now, for its forward or backward, and takes it back after (no layer's
// activations hold it between them). No-op for the other modes.
class LentAttentionCore {
 public:
  LentAttentionCore(bool lend, LayerActivations& acts, FloatBuffer& core)
      : slot_(lend ? &acts.attention_core() : nullptr), core_(core) {
    if (slot_) std::swap(*slot_, core_);
  }
  ~LentAttentionCore() {
    if (slot_) std::swap(*slot_, core_);
  }
  LentAttentionCore(const LentAttentionCore&) = delete;
  LentAttentionCore& operator=(const LentAttentionCore&) = delete;

 private:
  FloatBuffer* slot_;
  FloatBuffer& core_;
};
}  // namespace

void Model::ensure_scratch(int64_t N) {
  if (N <= scratch_tokens_) return;
  TRI_CHECK(tracker_ != nullptr, "Model::allocate() must be called before running the model");
  dres_ = FloatBuffer(*tracker_, MemCategory::kWorkspace, static_cast<std::size_t>(N * cfg_.n_embd));
  scratch_ = SharedScratch(*tracker_, N, cfg_.n_embd,
                           layer_scratch_floats(N),
                           tp_.sp() ? tp_.rows(N).count : -1);
  scratch_.matmul = matmul_.get();
  if (const int64_t lora = lora_scratch_floats(cfg_, tp_.size, N); lora > 0) {
    scratch_.lora = FloatBuffer(*tracker_, MemCategory::kWorkspace, static_cast<std::size_t>(lora));
  }
  scratch_tokens_ = N;
  if (tp_.size > 1) {
    ce_sums_ = FloatBuffer(*tracker_, MemCategory::kWorkspace, static_cast<std::size_t>(3 * N));
  }
}

void Model::embed_forward(ModelActivations& acts, const int32_t* ids, int64_t B, int64_t T) {
  TRI_CHECK(stage_.has_embedding, "embed_forward on a stage without the embedding");
  TRI_CHECK(B * T <= acts.B * acts.T && T <= cfg_.n_positions, "batch {}x{} exceeds activations {}x{}",
            B, T, acts.B, acts.T);
  const int64_t N = B * T, C = cfg_.n_embd;
  std::memcpy(acts.ids.data(), ids, static_cast<std::size_t>(N) * sizeof(int32_t));
  hook_forward(embed_group_);
  float* x = acts.stage_input();
  if (tp_.sp()) {
    // Megatron's sequence-parallel embedding: the partial lookups are reduce-scattered over
    // the token rows instead of allreduced; positions are added to this rank's rows.
    ensure_scratch(N);
    kernels::embedding_forward(scratch_.full.data(), ids, params_.data(wte_), N, C,
                               tp_.rank * vocab_local_, vocab_local_);
    const RowSplit rows = tp_.rows(N);
    tp_.reduce_scatter_rows(scratch_.full.data(), x, N, C);
    if (wpe_ >= 0) kernels::position_embedding_forward_rows(x, params_.data(wpe_), rows.begin, rows.count, T, C);
    return;
  }
  kernels::embedding_forward(x, ids, params_.data(wte_), N, C, tp_.rank * vocab_local_, vocab_local_);
  tp_.allreduce_sum(x, N * C);  // each tp rank contributed the rows of its vocabulary slice
  if (wpe_ >= 0) kernels::position_embedding_forward(x, params_.data(wpe_), B, T, C);
}

void Model::blocks_forward(ModelActivations& acts, int64_t B, int64_t T) {
  check_activations(acts);
  // Layers may use the shared scratch in forward too (Llama's separate q/k/v outputs).
  if (!blocks_.empty()) ensure_scratch(B * T);
  ensure_recompute(B, T);
  for (std::size_t i = 0; i < blocks_.size(); ++i) {
    hook_forward(block_groups_[i]);
    LayerActivations& la = layer_activations(acts, i);
    const LentAttentionCore lent(recompute_ == Recompute::kSelective, la, attention_core_);
    blocks_[i]->forward(params_, la, acts.residual[i + 1].data(), acts.residual[i].data(), B, T, scratch_);
  }
}

void Model::head_forward(ModelActivations& acts, int64_t N) {
  TRI_CHECK(stage_.has_head, "head on a stage without the LM head");
  const int64_t C = cfg_.n_embd;
  hook_forward(head_group_);
  if (tp_.sp() || acts.lnf.is16()) ensure_scratch(N);
  // A 16-bit ln_f output is written in fp32 to dln (free until the head's backward) and
  // rounded from there.
  const int64_t Nl = local_rows(N);
  float* out = acts.lnf.target(scratch_.dln.data());
  final_norm_forward(out, acts.lnf_mean.data(), acts.lnf_rstd.data(), acts.stage_output(), Nl);
  acts.lnf.store(out, Nl * C);
  matmul_->forward_nt(acts.logits.data(), head_input(acts, N), params_.data(head_w_), N, C, vocab_local_);
}

kernels::ActOperand Model::head_input(const ModelActivations& acts, int64_t N) {
  // The head is column-parallel over the vocabulary: it needs every row, gathered as saved.
  return tp_enter(tp_, acts.lnf, scratch_.gathered.data(), N, cfg_.n_embd);
}

void Model::final_norm_forward(float* out, float* mean, float* rstd, const float* x, int64_t rows) const {
  final_norm_->forward(params_, out, mean, rstd, x, rows);
}

void Model::vocab_parallel_loss(ModelActivations& acts, const int32_t* targets, int64_t N, float dloss) {
  namespace k = kernels;
  const int64_t Vl = vocab_local_, begin = tp_.rank * Vl;
  const int64_t real = k::vocab_real_columns(cfg_.vocab_size, begin, Vl);
  k::vocab_parallel_check_targets(targets, N, cfg_.vocab_size);
  if (static_cast<int64_t>(ce_sums_.size()) < 3 * N) {
    TRI_CHECK(tracker_ != nullptr, "Model::allocate() must be called before running the model");
    ce_sums_ = FloatBuffer(*tracker_, MemCategory::kWorkspace, static_cast<std::size_t>(3 * N));
  }
  float* rowmax = ce_sums_.data();
  float* sums = rowmax + N;  // (2N): sum-exp, target logit - max
  k::vocab_parallel_row_max(rowmax, acts.logits.data(), N, Vl, real);
  tp_.allreduce_max(rowmax, N);
  k::vocab_parallel_exp_sum(sums, acts.logits.data(), rowmax, targets, N, Vl, begin, real);
  tp_.allreduce_sum(sums, 2 * N);
  k::vocab_parallel_loss_grad(acts.losses.data(), acts.logits.data(), sums, targets, N, Vl, begin,
                              real, dloss);
}

double Model::head_forward_backward(ModelActivations& acts, const int32_t* targets, int64_t B,
                                  int64_t T, float dloss) {
  const int64_t N = B * T, C = cfg_.n_embd, Nl = local_rows(N);
  ensure_scratch(N);
  std::memcpy(acts.targets.data(), targets, static_cast<std::size_t>(N) * sizeof(int32_t));
  head_forward(acts, N);
  if (tp_.size == 1) {
    kernels::crossentropy_softmax_forward_backward(acts.losses.data(), acts.logits.data(), targets,
                                                   N, cfg_.vocab_size, vocab_local_, dloss);
  } else {
    vocab_parallel_loss(acts, targets, N, dloss);
  }
  const double loss_sum = kernels::sum_in_order(acts.losses.data(), N);
  // Backward through the head: logits now hold dlogits.
  hook_before_backward(head_group_);
  // wte's gradient from the head accumulates into the local slice (the embedding adds its part).
  // The head's input as head_forward gave it (under sequence parallelism the gathered rows,
  // still in scratch: nothing ran in between).
  float* dlnf = scratch_.dln.data();
  const kernels::ActOperand lnf =
      !tp_.sp() ? acts.lnf.operand()
                : (acts.lnf.is16() ? kernels::ActOperand(reinterpret_cast<const uint16_t*>(scratch_.gathered.data()),
                                                         acts.lnf.storage())
                                   : kernels::ActOperand(scratch_.gathered.data()));
  matmul_->backward_nt(dlnf, params_.grad(head_w_), acts.logits.data(), lnf,
                       params_.data(head_w_), N, C, vocab_local_);
  if (tp_.sp()) {
    // Conjugate of the all_gather before the head: sum the partials, keep this rank's rows.
    tp_.reduce_scatter_rows(dlnf, scratch_.dln_local.data(), N, C);
    dlnf = scratch_.dln_local.data();
  } else {
    // The head's input is replicated over tp: identity forward, allreduce backward.
    tp_.allreduce_sum(dlnf, N * C);
  }
  // The norm accumulates into dx; the residual-stream gradient starts here, so it is zeroed.
  // Under sequence parallelism ln_f ran on this rank's rows: NormGrads sums its partial
  // weight gradients over tp.
  std::memset(dres_.data(), 0, static_cast<std::size_t>(Nl * C) * sizeof(float));
  NormGrads norm_grads(tp_, scratch_, params_, {&*final_norm_});
  final_norm_->backward(params_, norm_grads.slot(0), dres_.data(), dlnf, acts.stage_output(),
                        acts.lnf_mean.data(), acts.lnf_rstd.data(), Nl);
  norm_grads.finish();
  if (!stage_.has_embedding) hook_after_backward(head_group_);
  return loss_sum;
}

void Model::blocks_backward(ModelActivations& acts, int64_t B, int64_t T) {
  check_activations(acts);
  ensure_scratch(B * T);
  ensure_recompute(B, T);
  for (std::size_t i = blocks_.size(); i-- > 0;) {
    // Under ZeRO-3 this gathers the layer's weights again: the rerun below needs them, so the
    // rerun comes after the hook, never before.
    hook_before_backward(block_groups_[i]);
    LayerActivations& la = layer_activations(acts, i);
    const float* x = acts.residual[i].data();
    if (recompute_ == Recompute::kFull) {
      // The same forward on the same input and weights: bitwise what the forward saved.
      blocks_[i]->forward(params_, la, rerun_out_.data(), x, B, T, scratch_);
    }
    const LentAttentionCore lent(recompute_ == Recompute::kSelective, la, attention_core_);
    if (recompute_ == Recompute::kSelective) blocks_[i]->recompute_attention_core(la, B, T, scratch_);
    blocks_[i]->backward(params_, la, scratch_, dres_.data(), x, B, T);
    hook_after_backward(block_groups_[i]);
  }
}

void Model::embed_backward(ModelActivations& acts, int64_t B, int64_t T) {
  const int64_t N = B * T, C = cfg_.n_embd;
  hook_before_backward(embed_group_);
  const float* dx = dres_.data();
  if (tp_.sp()) {
    // Conjugate of the embedding's reduce_scatter: every rank gets d/dx of all rows, so wpe's
    // gradient is complete (and identical) on every rank, and wte's covers all tokens.
    tp_.gather_rows(dres_.data(), scratch_.full.data(), N, C);
    dx = scratch_.full.data();
  }
  // A frozen embedding (a LoRA base) has no gradient slot (null): nothing to scatter.
  if (wpe_ >= 0 && params_.grad(wpe_)) kernels::position_embedding_backward(params_.grad(wpe_), dx, B, T, C);
  if (params_.grad(wte_)) {
    kernels::embedding_backward(params_.grad(wte_), dx, acts.ids.data(), N, C, tp_.rank * vocab_local_, vocab_local_);
  }
  // With the head on this stage too, wte's gradient is complete only now.
  hook_after_backward(embed_group_);
  if (stage_.has_head && head_group_ >= 0) hook_after_backward(head_group_);
}

double Model::forward_backward(ModelActivations& acts, const int32_t* ids, const int32_t* targets,
                             int64_t B, int64_t T, float dloss) {
  embed_forward(acts, ids, B, T);
  blocks_forward(acts, B, T);
  const double loss = head_forward_backward(acts, targets, B, T, dloss);
  blocks_backward(acts, B, T);
  embed_backward(acts, B, T);
  return loss;
}

double Model::forward_loss(ModelActivations& acts, const int32_t* ids, const int32_t* targets,
                         int64_t B, int64_t T) {
  embed_forward(acts, ids, B, T);
  blocks_forward(acts, B, T);
  return head_loss(acts, targets, B, T);
}

double Model::head_loss(ModelActivations& acts, const int32_t* targets, int64_t B, int64_t T) {
  const int64_t N = B * T;
  head_forward(acts, N);
  if (tp_.size == 1) {
    kernels::crossentropy_softmax_forward_backward(acts.losses.data(), acts.logits.data(), targets,
                                                   N, cfg_.vocab_size, vocab_local_, 0.0f);
  } else {
    vocab_parallel_loss(acts, targets, N, 0.0f);
  }
  const double loss_sum = kernels::sum_in_order(acts.losses.data(), N);
  return loss_sum;
}

const float* Model::forward_logits(ModelActivations& acts, const int32_t* ids, int64_t B, int64_t T) {
  embed_forward(acts, ids, B, T);
  blocks_forward(acts, B, T);
  head_forward(acts, B * T);
  return acts.logits.data();
}

const float* Model::forward_last_logits(ModelActivations& acts, const int32_t* ids, int64_t B, int64_t T) {
  TRI_CHECK(B == 1, "generation runs one sequence at a time");
  embed_forward(acts, ids, B, T);
  blocks_forward(acts, B, T);
  // Only the last position's logits are needed: one row through ln_f and the head.
  const int64_t C = cfg_.n_embd;
  if (tp_.size > 1) {
    const float* x = acts.stage_output();
    if (tp_.sp()) {  // the last row lives on one rank: gather the stage output's rows
      tp_.gather_rows(acts.stage_output(), scratch_.full.data(), B * T, C);
      x = scratch_.full.data();
    }
    const int64_t Vl = vocab_local_, Vp = Vl * tp_.size;
    const auto need = static_cast<std::size_t>(C + 2 + Vl + Vp);
    if (last_logits_.size() < need) {
      TRI_CHECK(tracker_ != nullptr, "Model::allocate() must be called before running the model");
      last_logits_ = FloatBuffer(*tracker_, MemCategory::kWorkspace, need);
    }
    float* lnf = last_logits_.data();
    float* local = lnf + C + 2;
    float* full = local + Vl;
    final_norm_forward(lnf, lnf + C, lnf + C + 1, x + (T - 1) * C, 1);
    matmul_->forward_nt(local, lnf, params_.data(head_w_), 1, C, Vl);
    // Sampling needs the whole vocabulary: gather every rank's slice in vocabulary order.
    const std::vector<int64_t> counts(static_cast<std::size_t>(tp_.size), Vl);
    tp_.comm->all_gather(local, full, counts);
    return full;
  }
  const float* last = acts.stage_output() + (T - 1) * C;
  if (acts.lnf.is16()) ensure_scratch(B * T);
  float* out = acts.lnf.target(scratch_.dln.data());
  final_norm_forward(out, acts.lnf_mean.data(), acts.lnf_rstd.data(), last, 1);
  acts.lnf.store(out, C);
  matmul_->forward_nt(acts.logits.data(), acts.lnf.operand(), params_.data(head_w_), 1, C, vocab_local_);
  return acts.logits.data();
}

}  // namespace trident::nn
