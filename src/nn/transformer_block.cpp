// The one forward and backward body of a pre-norm block (see transformer_block.h).
#include "nn/transformer_block.h"

#include <algorithm>

#include "core/check.h"
#include "kernels/kernels.h"
#include "nn/tp_region.h"

namespace trident::nn {

namespace {

// The work region the fused projections' separate-products path uses (attention and MLP run
// one after the other, so they share it); SwiGLU's activation gradient lives there too, as it
// is consumed before the gate|up projection's backward writes it.
int64_t work_floats(const BlockShape& s, int64_t N) {
  const int64_t attn = s.qkv_widest > 0 ? N * (s.qkv_widest + s.C) : 0;
  int64_t mlp = 0;
  if (!s.moe || s.shared_experts) {
    mlp = s.mlp_widest > 0 ? N * (s.mlp_widest + s.C) : 0;
    if (s.activation == MlpActivation::kSwiGlu) mlp = std::max(mlp, N * s.I);
  }
  return std::max(attn, mlp);
}

int64_t kv_replica_floats(const BlockShape& s) {
  return s.kv_replicated ? 2 * s.heads.KV() * s.C + 2 * s.heads.kv_heads_total * s.heads.HS * s.C : 0;
}

}  // namespace

struct TransformerBlock::Scratch {
  AttentionScratch attn;
  MlpScratch mlp;
};

TransformerBlock::TransformerBlock(const ModelConfig& cfg, const TpContext& tp, BlockShape shape, Norm norm1,
                                   Attention attn, Norm norm2, Mlp mlp)
    : cfg_(cfg), tp_(tp), shape_(shape), norm1_(std::move(norm1)), attn_(std::move(attn)),
      norm2_(std::move(norm2)), mlp_(std::move(mlp)) {
  // The float counts come from the shape: check the built modules are that shape.
  const auto widest_plus_c = [&](int64_t widest) { return widest > 0 ? widest + shape_.C : 0; };
  TRI_CHECK(attn_.qkv_projection().work_floats(1) == widest_plus_c(shape_.qkv_widest) &&
                attn_.kv_replicated() == shape_.kv_replicated && mlp_.is_moe() == shape_.moe &&
                mlp_.has_shared_experts() == shape_.shared_experts &&
                ((shape_.moe && !shape_.shared_experts) ||
                 (mlp_.in_projection()->out_width() == shape_.mlp_in &&
                                mlp_.in_projection()->work_floats(1) == widest_plus_c(shape_.mlp_widest))) &&
                norm1_.has_bias() == shape_.norm_bias,
            "transformer block: the modules built do not match the block's declared shape");
}

int64_t TransformerBlock::activation_bytes(const BlockShape& s, const ModelConfig& cfg, int tp, int64_t B,
                                           int64_t T, int64_t local_rows, kernels::Precision storage) {
  const int64_t N = B * T, Nl = local_rows < 0 ? N : local_rows;
  const int64_t mlp = (s.moe ? MoeActivations::bytes(cfg, tp, N, storage) : 0) +
                      (!s.moe || s.shared_experts ? Mlp::activation_bytes(s.activation, N, s.I, storage) : 0);
  // norm1, h, norm2 on Nl rows; qkv, atty, the core and the MLP's on N rows. A MoE block's
  // norm2 output stays fp32: the (fp32) router's weight gradient reads it as values.
  return Norm::activation_bytes(s.norm_bias, Nl, s.C, storage) +
         Norm::activation_bytes(s.norm_bias, Nl, s.C, s.moe ? kernels::Precision::kFp32 : storage) + 4 * Nl * s.C +
         Attention::activation_bytes(s.heads, B, T, storage) + mlp;
}

int64_t TransformerBlock::scratch_floats(const BlockShape& s, int64_t N) {
  // dqkv, datty; the MLP's column output gradient (dense or shared experts) and the shared
  // experts' (N, C) output; the shared work region; kv replica sums.
  const int64_t mlp = s.moe && !s.shared_experts ? 0 : N * s.mlp_in + (s.shared_experts ? N * s.C : 0);
  return N * (s.heads.QKV() + s.heads.Q()) + mlp + work_floats(s, N) + kv_replica_floats(s);
}

TransformerBlock::Scratch TransformerBlock::carve(SharedScratch& s, int64_t N) const {
  TRI_CHECK(static_cast<int64_t>(s.layer.size()) >= scratch_floats(shape_, N),
            "layer scratch of {} floats, the block needs {} for {} tokens", s.layer.size(),
            scratch_floats(shape_, N), N);
  Scratch g;
  float* p = s.layer.data();
  auto take = [&](int64_t n) { float* q = p; p += n; return q; };
  g.attn.dqkv = take(N * shape_.heads.QKV());
  g.attn.datty = take(N * shape_.heads.Q());
  if (!shape_.moe || shape_.shared_experts) g.mlp.dpre = take(N * shape_.mlp_in);
  if (shape_.shared_experts) g.mlp.shared = take(N * shape_.C);
  float* work = take(work_floats(shape_, N));
  g.attn.work = g.mlp.work = g.mlp.dact = work;
  if (shape_.kv_replicated) {
    g.attn.kv_part = take(2 * shape_.heads.KV() * shape_.C);
    g.attn.kv_sum = take(2 * shape_.heads.kv_heads_total * shape_.heads.HS * shape_.C);
  }
  return g;
}

std::unique_ptr<LayerActivations> TransformerBlock::make_activations(MemoryTracker& tracker, int64_t B, int64_t T,
                                                                     int64_t local_rows,
                                                                     bool save_attention_core,
                                                                     kernels::Precision storage) const {
  const int64_t N = B * T, Nl = local_rows < 0 ? N : local_rows;
  auto a = std::make_unique<BlockActivations>();
  a->norm1 = norm1_.make_activations(tracker, Nl, storage);
  a->attn = attn_.make_activations(tracker, B, T, save_attention_core, storage);
  a->h = FloatBuffer(tracker, MemCategory::kActivations, static_cast<std::size_t>(Nl * shape_.C));
  a->norm2 = norm2_.make_activations(tracker, Nl, mlp_.is_moe() ? kernels::Precision::kFp32 : storage);
  if (mlp_.is_moe()) a->moe = std::make_unique<MoeActivations>(tracker, cfg_, tp_.size, N, storage);
  a->mlp = mlp_.make_activations(tracker, N, storage);  // dense, or the shared experts' (none: empty)
  return a;
}

void TransformerBlock::recompute_attention_core(LayerActivations& acts, int64_t B, int64_t T,
                                                SharedScratch& s) const {
  // The attention output this also writes lands in datty, which backward overwrites first.
  attn_.recompute_core(static_cast<BlockActivations&>(acts).attn, carve(s, B * T).attn.datty, B, T);
}

kernels::ActOperand TransformerBlock::region_input(const NormActivations& a, SharedScratch& s, int64_t N) const {
  // Sequence parallelism gathers the rows as saved, in forward and again in backward (fp32
  // rows for a MoE block's norm2, whose router reads values).
  return tp_enter(tp_, a.out, s.gathered.data(), N, shape_.C);
}

void TransformerBlock::forward(ParameterSet& ps, LayerActivations& acts, float* out, const float* x, int64_t B,
                               int64_t T, SharedScratch& s) const {
  auto& a = static_cast<BlockActivations&>(acts);
  const int64_t N = B * T, Nl = tp_.local_rows(N), C = shape_.C;
  const Scratch g = carve(s, N);
  // A norm's fp32 output goes through dln (free until backward) when saved in 16 bits.
  norm1_.forward(ps, a.norm1, x, Nl, s.dln.data());
  attn_.forward(s.mm(), ps, s, a.attn, g.attn, a.h.data(), region_input(a.norm1, s, N), B, T);
  kernels::accumulate(a.h.data(), x, Nl * C);
  norm2_.forward(ps, a.norm2, a.h.data(), Nl, s.dln.data());
  const kernels::ActOperand in = region_input(a.norm2, s, N);
  mlp_.forward(s.mm(), ps, s, a.mlp, a.moe.get(), g.mlp, out, in, B, T);
  kernels::accumulate(out, a.h.data(), Nl * C);
}

void TransformerBlock::backward(ParameterSet& ps, const LayerActivations& acts, SharedScratch& s, float* dres,
                                const float* x, int64_t B, int64_t T) const {
  const auto& a = static_cast<const BlockActivations&>(acts);
  const int64_t N = B * T, Nl = tp_.local_rows(N), C = shape_.C;
  const Scratch g = carve(s, N);
  NormGrads norm_grads(tp_, s, ps, {&norm2_, &norm1_});
  // MLP: dres is d/d out and, through the residual, the direct part of d/d h. The norm's
  // output is re-gathered (sequence parallelism saves only this rank's rows).
  kernels::ActOperand in = region_input(a.norm2, s, N);
  moe_loss_sums_ += mlp_.backward(s.mm(), ps, s, a.mlp, a.moe.get(), g.mlp, s.dln.data(), dres, in, B, T, moe_weights_);
  if (a.moe) {  // this micro-batch's tokens per expert, for the metrics' expert_load
    expert_load_.resize(static_cast<std::size_t>(cfg_.n_experts), 0);
    for (std::size_t i = 0; i < a.moe->seq_counts.size(); ++i) expert_load_[i % expert_load_.size()] += a.moe->seq_counts[i];
    routing_hash_ += a.moe->routing_hash;
  }
  const float* dn = tp_enter_backward(tp_, s.dln.data(), s.dln_local.data(), N, C);
  norm2_.backward(ps, norm_grads.slot(0), dres, dn, a.norm2, a.h.data(), Nl);
  // Attention: dres is now d/d h.
  in = region_input(a.norm1, s, N);
  attn_.backward(s.mm(), ps, s, a.attn, g.attn, s.dln.data(), dres, in, B, T);
  dn = tp_enter_backward(tp_, s.dln.data(), s.dln_local.data(), N, C);
  norm1_.backward(ps, norm_grads.slot(1), dres, dn, a.norm1, x, Nl);
  norm_grads.finish();
}

}  // namespace trident::nn
