// Adding into existing arrays: the gradient/residual accumulation dst += src and the
// row-parallel bias epilogue (the bias added once after the tensor-parallel sum). Timed as the
// residual adds they are. And the ordered sum of the token losses.
#include "core/check.h"
#include "kernels/kernels.h"
#include "kernels/profile.h"

namespace trident::kernels {

void accumulate(float* dst, const float* src, int64_t n) {
  detail::KernelTimer timer(KernelOp::kResidual, false, n);
  TRI_CHECK(n >= 0, "accumulate: bad size n={}", n);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
}

void scale(float* x, float s, int64_t n) {
  detail::KernelTimer timer(KernelOp::kResidual, false, n);
  TRI_CHECK(n >= 0, "scale: bad size n={}", n);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) x[i] *= s;
}

void add_bias_rows(float* out, const float* bias, int64_t N, int64_t C) {
  detail::KernelTimer timer(KernelOp::kResidual, false, N * C);
  TRI_CHECK(N >= 0 && C >= 0, "add_bias_rows: bad sizes N={} C={}", N, C);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    float* row = out + n * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) row[c] += bias[c];
  }
}

double sum_in_order(const float* x, int64_t n) {
  TRI_CHECK(n >= 0, "sum_in_order: bad size n={}", n);
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += x[i];
  return s;
}

}  // namespace trident::kernels
