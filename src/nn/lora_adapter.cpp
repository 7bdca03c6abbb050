// LoRA adapter forward and backward (see lora_adapter.h).
#include "nn/lora_adapter.h"

#include "core/check.h"
#include "kernels/kernels.h"
#include "nn/lora.h"

namespace trident::nn {

std::optional<LoraAdapter> LoraAdapter::find(const ParameterSet& ps, const ParamDecl& base, const LoraContext& ctx) {
  const LoraDecls d = lora_decls(base, 1);  // the names; the rank comes from the registered shape
  const int a = ps.find(d.a.name);
  if (a < 0) return std::nullopt;
  const int b = ps.find(d.b.name);
  TRI_CHECK(b >= 0, "{} is registered without {}", d.a.name, d.b.name);
  LoraAdapter l;
  l.a_ = a;
  l.b_ = b;
  l.row_ = lora_row_parallel(base);
  l.scale_ = ctx.scale;
  l.tp_ = ctx.tp;
  const Shape& sa = ps.info(a).local_shape;
  const Shape& sb = ps.info(b).local_shape;
  TRI_CHECK(sa.size() == 2 && sb.size() == 2 && sa[0] == sb[1], "{} {} and {} {} are not one adapter", d.a.name,
            shape_str(sa), d.b.name, shape_str(sb));
  l.r_ = sa[0];
  l.in_ = sa[1];
  l.out_ = sb[0];
  return l;
}

void LoraAdapter::down(kernels::MatmulEngine& mm, const ParameterSet& ps, float* v, kernels::ActOperand in,
                       int64_t N) const {
  mm.forward_nt(v, in, ps.data(a_), N, in_, r_);
  if (row_) tp_.allreduce_sum(v, N * r_);
  kernels::scale(v, scale_, N * r_);
}

void LoraAdapter::forward(kernels::MatmulEngine& mm, const ParameterSet& ps, float* out, int64_t ld,
                          kernels::ActOperand in, int64_t N, float* work) const {
  float* v = work;           // (N, r)
  float* y = work + N * r_;  // (N, out)
  down(mm, ps, v, in, N);
  if (row_ && tp_.rank != 0) return;  // out holds partial sums: one rank adds the adapter's term
  mm.forward_nt(y, v, ps.data(b_), N, r_, out_);
  kernels::accumulate_columns(out, ld, y, out_, N, out_);
}

void LoraAdapter::backward(kernels::MatmulEngine& mm, ParameterSet& ps, float* dinp, const float* dout,
                           int64_t ld, kernels::ActOperand in, int64_t N, float* work) const {
  float* v = work;                 // (N, r)
  float* du = work + N * r_;       // (N, r)
  float* du_sum = du + N * r_;     // (N, r) column-parallel with tp > 1 only
  float* dy = du_sum + N * r_;     // (N, out) when dout is a block of wider rows
  float* dx = dy + N * out_;       // (N, in)
  down(mm, ps, v, in, N);
  const float* g = dout;
  if (ld != out_) {
    kernels::copy_columns(dy, out_, dout, ld, N, out_);
    g = dy;
  }
  mm.backward_nt(du, ps.grad(b_), g, v, ps.data(b_), N, r_, out_);  // du = dy B, dB += dy^T v
  kernels::scale(du, scale_, N * r_);
  if (!row_ && tp_.size > 1) {
    // dA needs every rank's columns' share of du; dx only this rank's (summed with the base's).
    kernels::copy_columns(du_sum, r_, du, r_, N, r_);
    tp_.allreduce_sum(du_sum, N * r_);
    mm.backward_nt(dx, nullptr, du, in, ps.data(a_), N, in_, r_);
    mm.backward_nt(nullptr, ps.grad(a_), du_sum, in, ps.data(a_), N, in_, r_);
  } else {
    mm.backward_nt(dx, ps.grad(a_), du, in, ps.data(a_), N, in_, r_);  // dx = du A, dA += du^T x
  }
  kernels::accumulate(dinp, dx, N * in_);
}

}  // namespace trident::nn
