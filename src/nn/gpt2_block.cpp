// Transformer block forward/backward and its tensor-parallel parameter slicing.
#include "nn/gpt2_block.h"

#include <cmath>
#include <cstring>
#include <fmt/format.h>

#include "core/check.h"
#include "kernels/kernels.h"
#include "nn/architecture.h"

namespace trident::nn {

Gpt2BlockActivations::Gpt2BlockActivations(MemoryTracker& tracker, const ModelConfig& cfg, int tp,
                                   int64_t B, int64_t T, int64_t local_rows,
                                   bool save_attention_core) {
  const auto N = static_cast<std::size_t>(B * T);
  const auto Nl = static_cast<std::size_t>(local_rows < 0 ? B * T : local_rows);
  const auto C = static_cast<std::size_t>(cfg.n_embd);
  const auto Cl = C / static_cast<std::size_t>(tp);
  const auto A = MemCategory::kActivations;
  ln1 = FloatBuffer(tracker, A, Nl * C);
  ln1_mean = FloatBuffer(tracker, A, Nl);
  ln1_rstd = FloatBuffer(tracker, A, Nl);
  qkv = FloatBuffer(tracker, A, N * 3 * Cl);
  if (save_attention_core) {
    att = FloatBuffer(tracker, A, static_cast<std::size_t>(attention_core_floats(cfg, tp, B, T)));
  }
  atty = FloatBuffer(tracker, A, N * Cl);
  residual2 = FloatBuffer(tracker, A, Nl * C);
  ln2 = FloatBuffer(tracker, A, Nl * C);
  ln2_mean = FloatBuffer(tracker, A, Nl);
  ln2_rstd = FloatBuffer(tracker, A, Nl);
  fch = FloatBuffer(tracker, A, N * 4 * Cl);
  fch_gelu = FloatBuffer(tracker, A, N * 4 * Cl);
}

int64_t Gpt2BlockActivations::floats(const ModelConfig& cfg, int tp, int64_t B, int64_t T,
                                 int64_t local_rows) {
  const int64_t N = B * T, C = cfg.n_embd, Cl = C / tp, NHl = cfg.n_head / tp;
  const int64_t Nl = local_rows < 0 ? N : local_rows;
  // ln1, residual2, ln2: 3C (on Nl rows); qkv, atty, fch, fch_gelu: 12 Cl; means/rstds: 4
  // (Nl rows); att: NHl*T.
  return Nl * (3 * C + 4) + N * 12 * Cl + B * NHl * T * T;
}

int64_t Gpt2BlockActivations::attention_core_floats(const ModelConfig& cfg, int tp, int64_t B,
                                                   int64_t T) {
  return B * (cfg.n_head / tp) * T * T;
}

int64_t Gpt2BlockActivations::scratch_floats(const ModelConfig& cfg, int tp, int64_t N) {
  return N * 8 * (cfg.n_embd / tp);  // dqkv 3Cl + datty Cl + dfch 4Cl
}

struct Gpt2Block::Grads {
  float* dqkv;   // (N, 3Cl)
  float* datty;  // (N, Cl)
  float* dfch;   // (N, 4Cl)
  Grads(SharedScratch& s, int64_t N, int64_t Cl)
      : dqkv(s.layer.data()), datty(dqkv + N * 3 * Cl), dfch(datty + N * Cl) {}
};

Gpt2Block::Gpt2Block(ParameterSet& params, const ModelConfig& cfg, const TpContext& tp, int layer)
    : cfg_(cfg), tp_(tp) {
  add_declared(params, architecture(Family::kGpt2).layer_params(cfg, layer), cfg, tp.rank, tp.size);
  const std::string p = fmt::format("h.{}.", layer);
  auto id = [&](const char* name) { return params.find(p + name); };
  ln1_w_ = id("ln_1.weight"), ln1_b_ = id("ln_1.bias");
  attn_w_ = id("attn.c_attn.weight"), attn_b_ = id("attn.c_attn.bias");
  proj_w_ = id("attn.c_proj.weight"), proj_b_ = id("attn.c_proj.bias");
  ln2_w_ = id("ln_2.weight"), ln2_b_ = id("ln_2.bias");
  fc_w_ = id("mlp.c_fc.weight"), fc_b_ = id("mlp.c_fc.bias");
  fcproj_w_ = id("mlp.c_proj.weight"), fcproj_b_ = id("mlp.c_proj.bias");
}

std::unique_ptr<LayerActivations> Gpt2Block::make_activations(MemoryTracker& tracker, int64_t B,
                                                              int64_t T, int64_t local_rows,
                                                              bool save_attention_core) const {
  return std::make_unique<Gpt2BlockActivations>(tracker, cfg_, tp_.size, B, T, local_rows,
                                                save_attention_core);
}

void Gpt2Block::recompute_attention_core(LayerActivations& acts, int64_t B, int64_t T,
                                         SharedScratch& s) const {
  auto& a = static_cast<Gpt2BlockActivations&>(acts);
  const int64_t N = B * T, Cl = cfg_.n_embd / tp_.size, NHl = cfg_.n_head / tp_.size;
  // The attention output is already saved (atty); this call's copy lands in datty, which the
  // backward overwrites before reading.
  kernels::attention_forward(Grads(s, N, Cl).datty, a.att.data(), a.qkv.data(), B, T, Cl, NHl);
}

namespace {
// Row-parallel epilogue: sum partial outputs across tp, then add the (replicated) bias once.
void finish_row_parallel(const TpContext& tp, float* out, const float* bias, int64_t N, int64_t C) {
  if (tp.size == 1) return;  // the bias went into the matmul already
  tp.allreduce_sum(out, N * C);
#pragma omp parallel for
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t c = 0; c < C; ++c) out[n * C + c] += bias[c];
  }
}
}  // namespace

void Gpt2Block::forward(ParameterSet& ps, LayerActivations& acts, float* out, const float* x,
                        int64_t B, int64_t T, SharedScratch& s) const {
  auto& a = static_cast<Gpt2BlockActivations&>(acts);
  if (tp_.sp()) {
    forward_sp(ps, a, s, out, x, B, T);
  } else {
    forward_plain(ps, a, s, out, x, B, T);
  }
}

void Gpt2Block::backward(ParameterSet& ps, const LayerActivations& acts, SharedScratch& s,
                         float* dres, const float* x, int64_t B, int64_t T) const {
  const auto& a = static_cast<const Gpt2BlockActivations&>(acts);
  if (tp_.sp()) {
    backward_sp(ps, a, s, dres, x, B, T);
  } else {
    backward_plain(ps, a, s, dres, x, B, T);
  }
}

void Gpt2Block::forward_plain(ParameterSet& ps, Gpt2BlockActivations& a, SharedScratch& s,
                              float* out, const float* x, int64_t B, int64_t T) const {
  namespace k = kernels;
  const int64_t N = B * T, C = cfg_.n_embd, Cl = C / tp_.size, NHl = cfg_.n_head / tp_.size;
  const bool single = tp_.size == 1;
  k::layernorm_forward(a.ln1.data(), a.ln1_mean.data(), a.ln1_rstd.data(), x, ps.data(ln1_w_),
                       ps.data(ln1_b_), N, C);
  s.mm().forward(a.qkv.data(), a.ln1.data(), ps.data(attn_w_), ps.data(attn_b_), N, C, 3 * Cl);
  k::attention_forward(a.atty.data(), a.att.data(), a.qkv.data(), B, T, Cl, NHl);
  float* attproj = a.residual2.data();
  s.mm().forward(attproj, a.atty.data(), ps.data(proj_w_), single ? ps.data(proj_b_) : nullptr,
                 N, Cl, C);
  finish_row_parallel(tp_, attproj, ps.data(proj_b_), N, C);
  k::residual_forward(a.residual2.data(), attproj, x, N * C);
  k::layernorm_forward(a.ln2.data(), a.ln2_mean.data(), a.ln2_rstd.data(), a.residual2.data(),
                       ps.data(ln2_w_), ps.data(ln2_b_), N, C);
  s.mm().forward(a.fch.data(), a.ln2.data(), ps.data(fc_w_), ps.data(fc_b_), N, C, 4 * Cl);
  k::gelu_forward(a.fch_gelu.data(), a.fch.data(), N * 4 * Cl);
  s.mm().forward(out, a.fch_gelu.data(), ps.data(fcproj_w_),
                 single ? ps.data(fcproj_b_) : nullptr, N, 4 * Cl, C);
  finish_row_parallel(tp_, out, ps.data(fcproj_b_), N, C);
  k::residual_forward(out, out, a.residual2.data(), N * C);
}

void Gpt2Block::backward_plain(ParameterSet& ps, const Gpt2BlockActivations& a, SharedScratch& s,
                               float* dres, const float* x, int64_t B, int64_t T) const {
  namespace k = kernels;
  const int64_t N = B * T, C = cfg_.n_embd, Cl = C / tp_.size, NHl = cfg_.n_head / tp_.size;
  const Grads g(s, N, Cl);
  // MLP branch: dres is d/d(out) and, through the residual, already d/d(residual2)'s direct part.
  s.mm().backward(g.dfch, ps.grad(fcproj_w_), ps.grad(fcproj_b_), dres,
                  a.fch_gelu.data(), ps.data(fcproj_w_), N, 4 * Cl, C);
  k::gelu_backward(g.dfch, a.fch.data(), g.dfch, N * 4 * Cl);
  s.mm().backward(s.dln.data(), ps.grad(fc_w_), ps.grad(fc_b_), g.dfch, a.ln2.data(),
                  ps.data(fc_w_), N, C, 4 * Cl);
  tp_.allreduce_sum(s.dln.data(), N * C);  // column-parallel input gradient
  k::layernorm_backward(dres, ps.grad(ln2_w_), ps.grad(ln2_b_), s.dln.data(), a.residual2.data(),
                        ps.data(ln2_w_), a.ln2_mean.data(), a.ln2_rstd.data(), N, C);
  // Attention branch: dres is now d/d(residual2).
  s.mm().backward(g.datty, ps.grad(proj_w_), ps.grad(proj_b_), dres, a.atty.data(),
                  ps.data(proj_w_), N, Cl, C);
  k::attention_backward(g.dqkv, g.datty, a.qkv.data(), a.att.data(), B, T, Cl, NHl);
  s.mm().backward(s.dln.data(), ps.grad(attn_w_), ps.grad(attn_b_), g.dqkv,
                  a.ln1.data(), ps.data(attn_w_), N, C, 3 * Cl);
  tp_.allreduce_sum(s.dln.data(), N * C);
  k::layernorm_backward(dres, ps.grad(ln1_w_), ps.grad(ln1_b_), s.dln.data(), x,
                        ps.data(ln1_w_), a.ln1_mean.data(), a.ln1_rstd.data(), N, C);
}

// ---- sequence parallel (Korthikanti et al. 2022) ----
// The residual stream x, out, residual2 and the LayerNorms live on this rank's Nl rows.
//   forward:  ln (Nl) -all_gather-> (N) -> column-parallel -> ... -> row-parallel partial (N)
//             -reduce_scatter-> (Nl) + bias + residual
//   backward: dres (Nl) -all_gather-> (N) -> row/column-parallel backward -> partial dln (N)
//             -reduce_scatter-> (Nl) -> LayerNorm backward (partial dweight, dbias)
// The row-parallel biases' gradients come from the gathered (N) output gradient, so they are
// complete on every rank; only the LayerNorm parameters' gradients are partial: they go to
// scratch, are allreduced over tp (4C floats) and then accumulate into the gradients.

namespace {
// out (Nl, C) = reduce_scatter(partial (N, C)) + bias + residual.
void finish_row_parallel_sp(const TpContext& tp, float* out, const float* partial,
                            const float* bias, const float* residual, int64_t N, int64_t Nl,
                            int64_t C) {
  tp.reduce_scatter_rows(partial, out, N, C);
#pragma omp parallel for
  for (int64_t n = 0; n < Nl; ++n) {
    for (int64_t c = 0; c < C; ++c) out[n * C + c] += bias[c];
  }
  kernels::residual_forward(out, out, residual, Nl * C);
}
}  // namespace

void Gpt2Block::forward_sp(ParameterSet& ps, Gpt2BlockActivations& a, SharedScratch& s, float* out,
                           const float* x, int64_t B, int64_t T) const {
  namespace k = kernels;
  const int64_t N = B * T, C = cfg_.n_embd, Cl = C / tp_.size, NHl = cfg_.n_head / tp_.size;
  const int64_t Nl = tp_.rows(N).count;
  k::layernorm_forward(a.ln1.data(), a.ln1_mean.data(), a.ln1_rstd.data(), x, ps.data(ln1_w_),
                       ps.data(ln1_b_), Nl, C);
  tp_.gather_rows(a.ln1.data(), s.gathered.data(), N, C);
  s.mm().forward(a.qkv.data(), s.gathered.data(), ps.data(attn_w_), ps.data(attn_b_), N, C, 3 * Cl);
  k::attention_forward(a.atty.data(), a.att.data(), a.qkv.data(), B, T, Cl, NHl);
  s.mm().forward(s.full.data(), a.atty.data(), ps.data(proj_w_), nullptr, N, Cl, C);
  finish_row_parallel_sp(tp_, a.residual2.data(), s.full.data(), ps.data(proj_b_), x, N, Nl, C);
  k::layernorm_forward(a.ln2.data(), a.ln2_mean.data(), a.ln2_rstd.data(), a.residual2.data(),
                       ps.data(ln2_w_), ps.data(ln2_b_), Nl, C);
  tp_.gather_rows(a.ln2.data(), s.gathered.data(), N, C);
  s.mm().forward(a.fch.data(), s.gathered.data(), ps.data(fc_w_), ps.data(fc_b_), N, C, 4 * Cl);
  k::gelu_forward(a.fch_gelu.data(), a.fch.data(), N * 4 * Cl);
  s.mm().forward(s.full.data(), a.fch_gelu.data(), ps.data(fcproj_w_), nullptr, N, 4 * Cl, C);
  finish_row_parallel_sp(tp_, out, s.full.data(), ps.data(fcproj_b_), a.residual2.data(), N, Nl, C);
}

void Gpt2Block::backward_sp(ParameterSet& ps, const Gpt2BlockActivations& a, SharedScratch& s,
                            float* dres, const float* x, int64_t B, int64_t T) const {
  namespace k = kernels;
  const int64_t N = B * T, C = cfg_.n_embd, Cl = C / tp_.size, NHl = cfg_.n_head / tp_.size;
  const int64_t Nl = tp_.rows(N).count;
  const Grads g(s, N, Cl);
  float* lng = s.norm_grads.data();  // [ln_2 weight | ln_2 bias | ln_1 weight | ln_1 bias]
  std::memset(lng, 0, static_cast<std::size_t>(4 * C) * sizeof(float));
  // MLP branch. Conjugate of the reduce_scatter: gather d/d(out) over the sequence.
  tp_.gather_rows(dres, s.full.data(), N, C);
  s.mm().backward(g.dfch, ps.grad(fcproj_w_), ps.grad(fcproj_b_), s.full.data(),
                  a.fch_gelu.data(), ps.data(fcproj_w_), N, 4 * Cl, C);
  k::gelu_backward(g.dfch, a.fch.data(), g.dfch, N * 4 * Cl);
  tp_.gather_rows(a.ln2.data(), s.gathered.data(), N, C);  // re-gather the saved local rows
  s.mm().backward(s.dln.data(), ps.grad(fc_w_), ps.grad(fc_b_), g.dfch,
                  s.gathered.data(), ps.data(fc_w_), N, C, 4 * Cl);
  // Conjugate of the all_gather: sum the partial input gradients, keep this rank's rows.
  tp_.reduce_scatter_rows(s.dln.data(), s.dln_local.data(), N, C);
  k::layernorm_backward(dres, lng, lng + C, s.dln_local.data(), a.residual2.data(),
                        ps.data(ln2_w_), a.ln2_mean.data(), a.ln2_rstd.data(), Nl, C);
  // Attention branch: dres is now d/d(residual2) on this rank's rows.
  tp_.gather_rows(dres, s.full.data(), N, C);
  s.mm().backward(g.datty, ps.grad(proj_w_), ps.grad(proj_b_), s.full.data(),
                  a.atty.data(), ps.data(proj_w_), N, Cl, C);
  k::attention_backward(g.dqkv, g.datty, a.qkv.data(), a.att.data(), B, T, Cl, NHl);
  tp_.gather_rows(a.ln1.data(), s.gathered.data(), N, C);
  s.mm().backward(s.dln.data(), ps.grad(attn_w_), ps.grad(attn_b_), g.dqkv,
                  s.gathered.data(), ps.data(attn_w_), N, C, 3 * Cl);
  tp_.reduce_scatter_rows(s.dln.data(), s.dln_local.data(), N, C);
  k::layernorm_backward(dres, lng + 2 * C, lng + 3 * C, s.dln_local.data(), x,
                        ps.data(ln1_w_), a.ln1_mean.data(), a.ln1_rstd.data(), Nl, C);
  // Sum the LayerNorm gradients' row shares over tp; accumulate (+=) into the gradients.
  tp_.allreduce_sum(lng, 4 * C);
  float* dst[4] = {ps.grad(ln2_w_), ps.grad(ln2_b_), ps.grad(ln1_w_), ps.grad(ln1_b_)};
  for (int p = 0; p < 4; ++p) {
    for (int64_t c = 0; c < C; ++c) dst[p][c] += lng[p * C + c];
  }
}

}  // namespace trident::nn
