// Llama decoder layer forward/backward (see llama_block.h).
#include "nn/llama_block.h"

#include <fmt/format.h>

#include <cstring>

#include "core/check.h"
#include "kernels/kernels.h"
#include "nn/architecture.h"
#include "nn/tp_region.h"

namespace trident::nn {

namespace {

// Widths on one of tp ranks: Q query and KV key (= value) channels, I the MLP's share. With
// kv replication (tp > NKV) a rank holds one key/value head.
struct Widths {
  int64_t C, HS, NH, NKV, Q, KV, QKV, I;
  Widths(const ModelConfig& c, int tp) {
    const int64_t nkv = c.kv_heads();
    C = c.n_embd;
    HS = c.head_size();
    NH = c.n_head / tp;
    NKV = nkv % tp == 0 ? nkv / tp : 1;
    Q = NH * HS;
    KV = NKV * HS;
    QKV = Q + 2 * KV;
    I = c.mlp_width() / tp;
  }
};

bool kv_replicated(const ModelConfig& c, int tp) { return tp > 1 && c.kv_heads() % tp != 0; }

// The layer's gradient scratch, carved from SharedScratch::layer.
struct Scratch {
  float* dqkv;     // (N, QKV) fused rows
  float* split;    // (N, QKV) as blocks [q (N, Q) | k (N, KV) | v (N, KV)]
  float* datty;    // (N, Q)
  float* dgate;    // (N, I)
  float* dup;      // (N, I)
  float* tmp;      // (N, C)
  float* kv_part;  // (2 KV C) this micro-batch's k/v weight gradients (kv replication only)
  float* kv_sum;   // (2 NKV_total HS C) every head's slot, summed over tp (kv replication only)
};

Scratch carve(SharedScratch& s, const Widths& w, int64_t N) {
  Scratch g{};
  g.dqkv = s.layer.data();
  g.split = g.dqkv + N * w.QKV;
  g.datty = g.split + N * w.QKV;
  g.dgate = g.datty + N * w.Q;
  g.dup = g.dgate + N * w.I;
  g.tmp = g.dup + N * w.I;
  g.kv_part = g.tmp + N * w.C;
  g.kv_sum = g.kv_part + 2 * w.KV * w.C;
  return g;
}

void add_into(float* dst, const float* src, int64_t n) { kernels::residual_forward(dst, dst, src, n); }

}  // namespace

LlamaBlockActivations::LlamaBlockActivations(MemoryTracker& tracker, const ModelConfig& cfg, int tp,
                                             int64_t B, int64_t T, int64_t local_rows,
                                             bool save_attention_core) {
  const Widths w(cfg, tp);
  const auto N = static_cast<std::size_t>(B * T);
  const auto Nl = static_cast<std::size_t>(local_rows < 0 ? B * T : local_rows);
  const auto C = static_cast<std::size_t>(w.C);
  const auto A = MemCategory::kActivations;
  n1 = FloatBuffer(tracker, A, Nl * C);
  rstd1 = FloatBuffer(tracker, A, Nl);
  qkv = FloatBuffer(tracker, A, N * static_cast<std::size_t>(w.QKV));
  if (save_attention_core) {
    att = FloatBuffer(tracker, A, static_cast<std::size_t>(attention_core_floats(cfg, tp, B, T)));
  }
  atty = FloatBuffer(tracker, A, N * static_cast<std::size_t>(w.Q));
  h = FloatBuffer(tracker, A, Nl * C);
  n2 = FloatBuffer(tracker, A, Nl * C);
  rstd2 = FloatBuffer(tracker, A, Nl);
  if (cfg.is_moe()) {
    moe = std::make_unique<MoeActivations>(tracker, cfg, tp, B * T);
    return;
  }
  gate = FloatBuffer(tracker, A, N * static_cast<std::size_t>(w.I));
  up = FloatBuffer(tracker, A, N * static_cast<std::size_t>(w.I));
  act = FloatBuffer(tracker, A, N * static_cast<std::size_t>(w.I));
}

int64_t LlamaBlockActivations::floats(const ModelConfig& cfg, int tp, int64_t B, int64_t T,
                                      int64_t local_rows) {
  const Widths w(cfg, tp);
  const int64_t N = B * T, Nl = local_rows < 0 ? N : local_rows;
  // n1, h, n2: 3C and rstd1/2: 2 on Nl rows; qkv, atty, gate, up, act on N rows; att.
  const int64_t mlp = cfg.is_moe() ? MoeActivations::floats(cfg, tp, N) : N * 3 * w.I;
  return Nl * (3 * w.C + 2) + N * (w.QKV + w.Q) + mlp + B * w.NH * T * T;
}

int64_t LlamaBlockActivations::attention_core_floats(const ModelConfig& cfg, int tp, int64_t B,
                                                    int64_t T) {
  return B * Widths(cfg, tp).NH * T * T;
}

int64_t LlamaBlockActivations::scratch_floats(const ModelConfig& cfg, int tp, int64_t N) {
  const Widths w(cfg, tp);
  int64_t f = N * (2 * w.QKV + w.Q + 2 * w.I + w.C);
  if (kv_replicated(cfg, tp)) f += 2 * w.KV * w.C + 2 * cfg.kv_heads() * w.HS * w.C;
  return f;
}

LlamaBlock::LlamaBlock(ParameterSet& params, const ModelConfig& cfg, const TpContext& tp, int layer)
    : cfg_(cfg), tp_(tp) {
  add_declared(params, local_experts(architecture(cfg.family).layer_params(cfg, layer), tp.ep.rank, tp.ep.size, cfg.n_experts),
               cfg, tp.rank, tp.size);
  const std::string p = fmt::format("model.layers.{}.", layer);
  auto id = [&](const char* name) { return params.find(p + name); };
  n1_w_ = id("input_layernorm.weight");
  q_w_ = id("self_attn.q_proj.weight");
  k_w_ = id("self_attn.k_proj.weight");
  v_w_ = id("self_attn.v_proj.weight");
  o_w_ = id("self_attn.o_proj.weight");
  n2_w_ = id("post_attention_layernorm.weight");
  if (cfg.is_moe()) {
    moe_ = std::make_unique<MoeMlp>(params, cfg, tp, layer);
  } else {
    gate_w_ = id("mlp.gate_proj.weight");
    up_w_ = id("mlp.up_proj.weight");
    down_w_ = id("mlp.down_proj.weight");
  }
  kv_replicas_ = params.info(k_w_).tp_replicas;
}

std::unique_ptr<LayerActivations> LlamaBlock::make_activations(MemoryTracker& tracker, int64_t B,
                                                               int64_t T, int64_t local_rows,
                                                               bool save_attention_core) const {
  return std::make_unique<LlamaBlockActivations>(tracker, cfg_, tp_.size, B, T, local_rows,
                                                 save_attention_core);
}

void LlamaBlock::recompute_attention_core(LayerActivations& acts, int64_t B, int64_t T,
                                          SharedScratch& s) const {
  auto& a = static_cast<LlamaBlockActivations&>(acts);
  const Widths w(cfg_, tp_.size);
  // qkv was saved after rotary, so the core follows from it alone; the attention output this
  // call also writes lands in datty, which the backward overwrites before reading.
  kernels::attention_gqa_forward(carve(s, w, B * T).datty, a.att.data(), a.qkv.data(), B, T, w.NH,
                                 w.NKV, w.HS);
}

void LlamaBlock::forward(ParameterSet& ps, LayerActivations& acts, float* out, const float* x,
                         int64_t B, int64_t T, SharedScratch& s) const {
  namespace k = kernels;
  auto& a = static_cast<LlamaBlockActivations&>(acts);
  const Widths w(cfg_, tp_.size);
  const int64_t N = B * T, Nl = tp_.local_rows(N), C = w.C;
  const auto eps = static_cast<float>(cfg_.norm_eps);
  Scratch g = carve(s, w, N);
  // Attention.
  k::rmsnorm_forward(a.n1.data(), a.rstd1.data(), x, ps.data(n1_w_), Nl, C, eps);
  const float* n1 = tp_enter(tp_, a.n1.data(), s.gathered.data(), N, C);
  float* q = g.split;
  float* kk = q + N * w.Q;
  float* v = kk + N * w.KV;
  s.mm().forward_nt(q, n1, ps.data(q_w_), N, C, w.Q);
  s.mm().forward_nt(kk, n1, ps.data(k_w_), N, C, w.KV);
  s.mm().forward_nt(v, n1, ps.data(v_w_), N, C, w.KV);
  k::pack_columns3(a.qkv.data(), q, w.Q, kk, w.KV, v, w.KV, N);
  // Queries and keys are the first NH + NKV heads of each fused row.
  k::rope_forward(a.qkv.data(), B, T, w.NH + w.NKV, w.HS, w.QKV, static_cast<float>(cfg_.rope_theta));
  k::attention_gqa_forward(a.atty.data(), a.att.data(), a.qkv.data(), B, T, w.NH, w.NKV, w.HS);
  float* partial = tp_.sp() ? s.full.data() : a.h.data();
  s.mm().forward_nt(partial, a.atty.data(), ps.data(o_w_), N, w.Q, C);
  tp_exit(tp_, partial, a.h.data(), N, C);
  add_into(a.h.data(), x, Nl * C);
  // MLP.
  k::rmsnorm_forward(a.n2.data(), a.rstd2.data(), a.h.data(), ps.data(n2_w_), Nl, C, eps);
  const float* n2 = tp_enter(tp_, a.n2.data(), s.gathered.data(), N, C);
  partial = tp_.sp() ? s.full.data() : out;
  if (moe_) {
    moe_->forward(s.mm(), ps, *a.moe, partial, n2, B, T);
  } else {
    s.mm().forward_nt(a.gate.data(), n2, ps.data(gate_w_), N, C, w.I);
    s.mm().forward_nt(a.up.data(), n2, ps.data(up_w_), N, C, w.I);
    k::swiglu_forward(a.act.data(), a.gate.data(), a.up.data(), N * w.I);
    s.mm().forward_nt(partial, a.act.data(), ps.data(down_w_), N, w.I, C);
  }
  tp_exit(tp_, partial, out, N, C);
  add_into(out, a.h.data(), Nl * C);
}

void LlamaBlock::backward(ParameterSet& ps, const LayerActivations& acts, SharedScratch& s,
                          float* dres, const float* x, int64_t B, int64_t T) const {
  namespace k = kernels;
  const auto& a = static_cast<const LlamaBlockActivations&>(acts);
  const Widths w(cfg_, tp_.size);
  const int64_t N = B * T, Nl = tp_.local_rows(N), C = w.C;
  Scratch g = carve(s, w, N);
  // Under sequence parallelism the norms ran on this rank's rows: their weight gradients are
  // partial sums, collected here and summed over tp at the end.
  float* ng2 = tp_.sp() ? s.norm_grads.data() : ps.grad(n2_w_);
  float* ng1 = tp_.sp() ? s.norm_grads.data() + C : ps.grad(n1_w_);
  if (tp_.sp()) std::memset(s.norm_grads.data(), 0, static_cast<std::size_t>(2 * C) * sizeof(float));

  // MLP: dres is d/d out and, through the residual, the direct part of d/d h.
  const float* dout = tp_exit_backward(tp_, dres, s.full.data(), N, C);
  if (moe_) {
    const float* n2 = tp_enter(tp_, a.n2.data(), s.gathered.data(), N, C);  // re-gathered
    moe_->backward(s.mm(), ps, *a.moe, s.dln.data(), dout, n2, B, T, aux_weight_);
    aux_loss_sum_ += a.moe->aux_sum;
    expert_load_.resize(static_cast<std::size_t>(cfg_.n_experts), 0);
    for (std::size_t i = 0; i < a.moe->seq_counts.size(); ++i) expert_load_[i % expert_load_.size()] += a.moe->seq_counts[i];
  } else {
    s.mm().backward_nt(g.dgate, ps.grad(down_w_), dout, a.act.data(), ps.data(down_w_), N, w.I, C);
    k::swiglu_backward(g.dgate, g.dup, g.dgate, a.gate.data(), a.up.data(), N * w.I);
    const float* n2 = tp_enter(tp_, a.n2.data(), s.gathered.data(), N, C);  // re-gathered
    s.mm().backward_nt(s.dln.data(), ps.grad(gate_w_), g.dgate, n2, ps.data(gate_w_), N, C, w.I);
    s.mm().backward_nt(g.tmp, ps.grad(up_w_), g.dup, n2, ps.data(up_w_), N, C, w.I);
    add_into(s.dln.data(), g.tmp, N * C);
  }
  const float* dn2 = tp_enter_backward(tp_, s.dln.data(), s.dln_local.data(), N, C);
  k::rmsnorm_backward(dres, ng2, dn2, a.h.data(), ps.data(n2_w_), a.rstd2.data(), Nl, C);

  // Attention: dres is now d/d h.
  dout = tp_exit_backward(tp_, dres, s.full.data(), N, C);
  s.mm().backward_nt(g.datty, ps.grad(o_w_), dout, a.atty.data(), ps.data(o_w_), N, w.Q, C);
  k::attention_gqa_backward(g.dqkv, g.datty, a.qkv.data(), a.att.data(), B, T, w.NH, w.NKV, w.HS);
  k::rope_backward(g.dqkv, B, T, w.NH + w.NKV, w.HS, w.QKV, static_cast<float>(cfg_.rope_theta));
  float* dq = g.split;
  float* dk = dq + N * w.Q;
  float* dv = dk + N * w.KV;
  k::unpack_columns3(dq, w.Q, dk, w.KV, dv, w.KV, g.dqkv, N);
  const float* n1 = tp_enter(tp_, a.n1.data(), s.gathered.data(), N, C);
  const bool replicas = kv_replicas_ > 1;
  float* dwk = replicas ? g.kv_part : ps.grad(k_w_);
  float* dwv = replicas ? g.kv_part + w.KV * C : ps.grad(v_w_);
  if (replicas) std::memset(g.kv_part, 0, static_cast<std::size_t>(2 * w.KV * C) * sizeof(float));
  s.mm().backward_nt(s.dln.data(), ps.grad(q_w_), dq, n1, ps.data(q_w_), N, C, w.Q);
  s.mm().backward_nt(g.tmp, dwk, dk, n1, ps.data(k_w_), N, C, w.KV);
  add_into(s.dln.data(), g.tmp, N * C);
  s.mm().backward_nt(g.tmp, dwv, dv, n1, ps.data(v_w_), N, C, w.KV);
  add_into(s.dln.data(), g.tmp, N * C);
  if (replicas) sum_kv_replicas(ps, g.kv_part, g.kv_part + w.KV * C, g.kv_sum);
  const float* dn1 = tp_enter_backward(tp_, s.dln.data(), s.dln_local.data(), N, C);
  k::rmsnorm_backward(dres, ng1, dn1, x, ps.data(n1_w_), a.rstd1.data(), Nl, C);

  if (tp_.sp()) {
    tp_.allreduce_sum(s.norm_grads.data(), 2 * C);
    add_into(ps.grad(n2_w_), s.norm_grads.data(), C);
    add_into(ps.grad(n1_w_), s.norm_grads.data() + C, C);
  }
}

void LlamaBlock::sum_kv_replicas(ParameterSet& ps, const float* dk, const float* dv, float* all) const {
  // Every rank writes its share into its head's slot of a buffer holding all heads; the sum
  // over tp then holds, in each slot, the sum over the ranks sharing that head.
  const Widths w(cfg_, tp_.size);
  const int64_t slot = w.HS * w.C, heads = cfg_.kv_heads();
  float* sum = all;
  std::memset(sum, 0, static_cast<std::size_t>(2 * heads * slot) * sizeof(float));
  const int64_t head = tp_.rank / kv_replicas_;
  std::memcpy(sum + head * slot, dk, static_cast<std::size_t>(slot) * sizeof(float));
  std::memcpy(sum + (heads + head) * slot, dv, static_cast<std::size_t>(slot) * sizeof(float));
  tp_.allreduce_sum(sum, 2 * heads * slot);
  add_into(ps.grad(k_w_), sum + head * slot, slot);
  add_into(ps.grad(v_w_), sum + (heads + head) * slot, slot);
}

}  // namespace trident::nn
