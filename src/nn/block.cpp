// Transformer block forward/backward and its tensor-parallel parameter slicing.
#include "nn/block.h"

#include <cmath>
#include <cstring>
#include <fmt/format.h>

#include "core/check.h"
#include "kernels/kernels.h"

namespace trident::nn {

namespace {

// Column split of a [in, parts*width] matrix (or [parts*width] bias) where each of `parts`
// consecutive blocks of `width` columns is split over tp separately (q, k, v each by heads).
ShardSpec column_split(int dim, int64_t width, int parts, const TpContext& tp) {
  ShardSpec s;
  s.dim = dim;
  if (tp.size == 1) return s;
  const int64_t local = width / tp.size;
  for (int p = 0; p < parts; ++p) s.chunks.push_back({p * width + tp.rank * local, local});
  return s;
}

ShardSpec row_split(int64_t rows, const TpContext& tp) {
  ShardSpec s;
  s.dim = 0;
  if (tp.size == 1) return s;
  const int64_t local = rows / tp.size;
  s.chunks.push_back({tp.rank * local, local});
  return s;
}

}  // namespace

BlockActivations::BlockActivations(MemoryTracker& tracker, const GPTConfig& cfg, int tp,
                                   int64_t B, int64_t T, int64_t local_rows) {
  const auto N = static_cast<std::size_t>(B * T);
  const auto Nl = static_cast<std::size_t>(local_rows < 0 ? B * T : local_rows);
  const auto C = static_cast<std::size_t>(cfg.n_embd);
  const auto Cl = C / static_cast<std::size_t>(tp);
  const auto NHl = static_cast<std::size_t>(cfg.n_head / tp);
  const auto A = MemCategory::kActivations;
  ln1 = FloatBuffer(tracker, A, Nl * C);
  ln1_mean = FloatBuffer(tracker, A, Nl);
  ln1_rstd = FloatBuffer(tracker, A, Nl);
  qkv = FloatBuffer(tracker, A, N * 3 * Cl);
  att = FloatBuffer(tracker, A, static_cast<std::size_t>(B) * NHl * static_cast<std::size_t>(T * T));
  atty = FloatBuffer(tracker, A, N * Cl);
  residual2 = FloatBuffer(tracker, A, Nl * C);
  ln2 = FloatBuffer(tracker, A, Nl * C);
  ln2_mean = FloatBuffer(tracker, A, Nl);
  ln2_rstd = FloatBuffer(tracker, A, Nl);
  fch = FloatBuffer(tracker, A, N * 4 * Cl);
  fch_gelu = FloatBuffer(tracker, A, N * 4 * Cl);
}

int64_t BlockActivations::floats(const GPTConfig& cfg, int tp, int64_t B, int64_t T,
                                 int64_t local_rows) {
  const int64_t N = B * T, C = cfg.n_embd, Cl = C / tp, NHl = cfg.n_head / tp;
  const int64_t Nl = local_rows < 0 ? N : local_rows;
  // ln1, residual2, ln2: 3C (on Nl rows); qkv, atty, fch, fch_gelu: 12 Cl; means/rstds: 4
  // (Nl rows); att: NHl*T.
  return Nl * (3 * C + 4) + N * 12 * Cl + B * NHl * T * T;
}

BlockScratch::BlockScratch(MemoryTracker& tracker, const GPTConfig& cfg, int tp, int64_t N,
                           int64_t sp_local_rows) {
  const auto n = static_cast<std::size_t>(N);
  const auto C = static_cast<std::size_t>(cfg.n_embd);
  const auto Cl = C / static_cast<std::size_t>(tp);
  const auto W = MemCategory::kWorkspace;
  dln = FloatBuffer(tracker, W, n * C);
  dqkv = FloatBuffer(tracker, W, n * 3 * Cl);
  datty = FloatBuffer(tracker, W, n * Cl);
  dfch = FloatBuffer(tracker, W, n * 4 * Cl);
  if (sp_local_rows >= 0) {
    gathered = FloatBuffer(tracker, W, n * C);
    full = FloatBuffer(tracker, W, n * C);
    dln_local = FloatBuffer(tracker, W, static_cast<std::size_t>(sp_local_rows) * C);
    ln_grads = FloatBuffer(tracker, W, 4 * C);
  }
}

Block::Block(ParameterSet& params, const GPTConfig& cfg, const TpContext& tp, int layer)
    : cfg_(cfg), tp_(tp) {
  TRI_CHECK(cfg.n_head % tp.size == 0,
            "n_head ({}) is not divisible by tp ({}): tensor parallelism gives each rank whole "
            "attention heads; choose a tp that divides {}",
            cfg.n_head, tp.size, cfg.n_head);
  TRI_CHECK((4 * static_cast<int64_t>(cfg.n_embd)) % tp.size == 0,
            "the MLP width 4*n_embd ({}) is not divisible by tp ({}): mlp.c_fc is split by "
            "columns; choose a tp that divides {}",
            4 * static_cast<int64_t>(cfg.n_embd), tp.size, 4 * static_cast<int64_t>(cfg.n_embd));
  const int64_t C = cfg.n_embd;
  const std::string p = fmt::format("h.{}.", layer);
  const float std_w = 0.02f;
  // GPT-2 scales the residual projections by 1/sqrt(2 * n_layer) (two per block).
  const float std_proj = 0.02f / std::sqrt(2.0f * static_cast<float>(cfg.n_layer));
  auto add = [&](const std::string& name, Shape shape, ShardSpec shard, bool decay, float std,
                 float value, bool replicated) {
    ParamInfo info;
    info.name = p + name;
    info.logical_shape = std::move(shape);
    info.shard = std::move(shard);
    info.weight_decay = decay;
    info.init_std = std;
    info.init_value = value;
    info.tp_replicated = replicated || tp.size == 1;
    return params.add(std::move(info));
  };
  const ShardSpec full;
  ln1_w_ = add("ln_1.weight", {C}, full, false, 0, 1, true);
  ln1_b_ = add("ln_1.bias", {C}, full, false, 0, 0, true);
  attn_w_ = add("attn.c_attn.weight", {C, 3 * C}, column_split(1, C, 3, tp), true, std_w, 0, false);
  attn_b_ = add("attn.c_attn.bias", {3 * C}, column_split(0, C, 3, tp), false, 0, 0, false);
  proj_w_ = add("attn.c_proj.weight", {C, C}, row_split(C, tp), true, std_proj, 0, false);
  proj_b_ = add("attn.c_proj.bias", {C}, full, false, 0, 0, true);
  ln2_w_ = add("ln_2.weight", {C}, full, false, 0, 1, true);
  ln2_b_ = add("ln_2.bias", {C}, full, false, 0, 0, true);
  fc_w_ = add("mlp.c_fc.weight", {C, 4 * C}, column_split(1, 4 * C, 1, tp), true, std_w, 0, false);
  fc_b_ = add("mlp.c_fc.bias", {4 * C}, column_split(0, 4 * C, 1, tp), false, 0, 0, false);
  fcproj_w_ = add("mlp.c_proj.weight", {4 * C, C}, row_split(4 * C, tp), true, std_proj, 0, false);
  fcproj_b_ = add("mlp.c_proj.bias", {C}, full, false, 0, 0, true);
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

void Block::forward(ParameterSet& ps, BlockActivations& a, float* out, const float* x,
                    int64_t B, int64_t T, BlockScratch* scratch) const {
  namespace k = kernels;
  if (tp_.sp()) {
    TRI_CHECK(scratch != nullptr, "sequence-parallel block forward needs the gradient scratch");
    forward_sp(ps, a, *scratch, out, x, B, T);
    return;
  }
  const int64_t N = B * T, C = cfg_.n_embd, Cl = C / tp_.size, NHl = cfg_.n_head / tp_.size;
  const bool single = tp_.size == 1;
  k::layernorm_forward(a.ln1.data(), a.ln1_mean.data(), a.ln1_rstd.data(), x, ps.data(ln1_w_),
                       ps.data(ln1_b_), N, C);
  k::matmul_forward(a.qkv.data(), a.ln1.data(), ps.data(attn_w_), ps.data(attn_b_), N, C, 3 * Cl);
  k::attention_forward(a.atty.data(), a.att.data(), a.qkv.data(), B, T, Cl, NHl);
  float* attproj = a.residual2.data();
  k::matmul_forward(attproj, a.atty.data(), ps.data(proj_w_), single ? ps.data(proj_b_) : nullptr,
                    N, Cl, C);
  finish_row_parallel(tp_, attproj, ps.data(proj_b_), N, C);
  k::residual_forward(a.residual2.data(), attproj, x, N * C);
  k::layernorm_forward(a.ln2.data(), a.ln2_mean.data(), a.ln2_rstd.data(), a.residual2.data(),
                       ps.data(ln2_w_), ps.data(ln2_b_), N, C);
  k::matmul_forward(a.fch.data(), a.ln2.data(), ps.data(fc_w_), ps.data(fc_b_), N, C, 4 * Cl);
  k::gelu_forward(a.fch_gelu.data(), a.fch.data(), N * 4 * Cl);
  k::matmul_forward(out, a.fch_gelu.data(), ps.data(fcproj_w_),
                    single ? ps.data(fcproj_b_) : nullptr, N, 4 * Cl, C);
  finish_row_parallel(tp_, out, ps.data(fcproj_b_), N, C);
  k::residual_forward(out, out, a.residual2.data(), N * C);
}

void Block::backward(ParameterSet& ps, const BlockActivations& a, BlockScratch& s, float* dres,
                     const float* x, int64_t B, int64_t T) const {
  namespace k = kernels;
  if (tp_.sp()) {
    backward_sp(ps, a, s, dres, x, B, T);
    return;
  }
  const int64_t N = B * T, C = cfg_.n_embd, Cl = C / tp_.size, NHl = cfg_.n_head / tp_.size;
  // MLP branch: dres is d/d(out) and, through the residual, already d/d(residual2)'s direct part.
  k::matmul_backward(s.dfch.data(), ps.grad(fcproj_w_), ps.grad(fcproj_b_), dres,
                     a.fch_gelu.data(), ps.data(fcproj_w_), N, 4 * Cl, C);
  k::gelu_backward(s.dfch.data(), a.fch.data(), s.dfch.data(), N * 4 * Cl);
  k::matmul_backward(s.dln.data(), ps.grad(fc_w_), ps.grad(fc_b_), s.dfch.data(), a.ln2.data(),
                     ps.data(fc_w_), N, C, 4 * Cl);
  tp_.allreduce_sum(s.dln.data(), N * C);  // column-parallel input gradient
  k::layernorm_backward(dres, ps.grad(ln2_w_), ps.grad(ln2_b_), s.dln.data(), a.residual2.data(),
                        ps.data(ln2_w_), a.ln2_mean.data(), a.ln2_rstd.data(), N, C);
  // Attention branch: dres is now d/d(residual2).
  k::matmul_backward(s.datty.data(), ps.grad(proj_w_), ps.grad(proj_b_), dres, a.atty.data(),
                     ps.data(proj_w_), N, Cl, C);
  k::attention_backward(s.dqkv.data(), s.datty.data(), a.qkv.data(), a.att.data(), B, T, Cl, NHl);
  k::matmul_backward(s.dln.data(), ps.grad(attn_w_), ps.grad(attn_b_), s.dqkv.data(),
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

void Block::forward_sp(ParameterSet& ps, BlockActivations& a, BlockScratch& s, float* out,
                       const float* x, int64_t B, int64_t T) const {
  namespace k = kernels;
  const int64_t N = B * T, C = cfg_.n_embd, Cl = C / tp_.size, NHl = cfg_.n_head / tp_.size;
  const int64_t Nl = tp_.rows(N).count;
  k::layernorm_forward(a.ln1.data(), a.ln1_mean.data(), a.ln1_rstd.data(), x, ps.data(ln1_w_),
                       ps.data(ln1_b_), Nl, C);
  tp_.gather_rows(a.ln1.data(), s.gathered.data(), N, C);
  k::matmul_forward(a.qkv.data(), s.gathered.data(), ps.data(attn_w_), ps.data(attn_b_), N, C, 3 * Cl);
  k::attention_forward(a.atty.data(), a.att.data(), a.qkv.data(), B, T, Cl, NHl);
  k::matmul_forward(s.full.data(), a.atty.data(), ps.data(proj_w_), nullptr, N, Cl, C);
  finish_row_parallel_sp(tp_, a.residual2.data(), s.full.data(), ps.data(proj_b_), x, N, Nl, C);
  k::layernorm_forward(a.ln2.data(), a.ln2_mean.data(), a.ln2_rstd.data(), a.residual2.data(),
                       ps.data(ln2_w_), ps.data(ln2_b_), Nl, C);
  tp_.gather_rows(a.ln2.data(), s.gathered.data(), N, C);
  k::matmul_forward(a.fch.data(), s.gathered.data(), ps.data(fc_w_), ps.data(fc_b_), N, C, 4 * Cl);
  k::gelu_forward(a.fch_gelu.data(), a.fch.data(), N * 4 * Cl);
  k::matmul_forward(s.full.data(), a.fch_gelu.data(), ps.data(fcproj_w_), nullptr, N, 4 * Cl, C);
  finish_row_parallel_sp(tp_, out, s.full.data(), ps.data(fcproj_b_), a.residual2.data(), N, Nl, C);
}

void Block::backward_sp(ParameterSet& ps, const BlockActivations& a, BlockScratch& s,
                        float* dres, const float* x, int64_t B, int64_t T) const {
  namespace k = kernels;
  const int64_t N = B * T, C = cfg_.n_embd, Cl = C / tp_.size, NHl = cfg_.n_head / tp_.size;
  const int64_t Nl = tp_.rows(N).count;
  float* lng = s.ln_grads.data();  // [ln_2 weight | ln_2 bias | ln_1 weight | ln_1 bias]
  std::memset(lng, 0, static_cast<std::size_t>(4 * C) * sizeof(float));
  // MLP branch. Conjugate of the reduce_scatter: gather d/d(out) over the sequence.
  tp_.gather_rows(dres, s.full.data(), N, C);
  k::matmul_backward(s.dfch.data(), ps.grad(fcproj_w_), ps.grad(fcproj_b_), s.full.data(),
                     a.fch_gelu.data(), ps.data(fcproj_w_), N, 4 * Cl, C);
  k::gelu_backward(s.dfch.data(), a.fch.data(), s.dfch.data(), N * 4 * Cl);
  tp_.gather_rows(a.ln2.data(), s.gathered.data(), N, C);  // re-gather the saved local rows
  k::matmul_backward(s.dln.data(), ps.grad(fc_w_), ps.grad(fc_b_), s.dfch.data(),
                     s.gathered.data(), ps.data(fc_w_), N, C, 4 * Cl);
  // Conjugate of the all_gather: sum the partial input gradients, keep this rank's rows.
  tp_.reduce_scatter_rows(s.dln.data(), s.dln_local.data(), N, C);
  k::layernorm_backward(dres, lng, lng + C, s.dln_local.data(), a.residual2.data(),
                        ps.data(ln2_w_), a.ln2_mean.data(), a.ln2_rstd.data(), Nl, C);
  // Attention branch: dres is now d/d(residual2) on this rank's rows.
  tp_.gather_rows(dres, s.full.data(), N, C);
  k::matmul_backward(s.datty.data(), ps.grad(proj_w_), ps.grad(proj_b_), s.full.data(),
                     a.atty.data(), ps.data(proj_w_), N, Cl, C);
  k::attention_backward(s.dqkv.data(), s.datty.data(), a.qkv.data(), a.att.data(), B, T, Cl, NHl);
  tp_.gather_rows(a.ln1.data(), s.gathered.data(), N, C);
  k::matmul_backward(s.dln.data(), ps.grad(attn_w_), ps.grad(attn_b_), s.dqkv.data(),
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
