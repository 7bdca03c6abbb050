// RMSNorm (Llama) over the last dimension, forward and backward, as fused OpenMP loops. The
// statistic accumulates in fp32 over C, like LayerNorm's; dweight is reduced per channel with
// rows in order, so it does not depend on the thread count.
#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "kernels/kernels.h"
#include "kernels/profile.h"

namespace trident::kernels {
namespace {
constexpr int64_t kColBlock = 64;
}  // namespace

void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int64_t N, int64_t C,
                     float eps) {
  detail::KernelTimer timer(KernelOp::kRmsNorm, false, N, C);
  TRI_CHECK(N >= 0 && C > 0 && eps >= 0.0f, "rmsnorm_forward: bad sizes N={} C={} eps={}", N, C, eps);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* x = inp + n * C;
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int64_t c = 0; c < C; ++c) ss += x[c] * x[c];
    const float s = 1.0f / std::sqrt(ss / static_cast<float>(C) + eps);
    float* o = out + n * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) o[c] = x[c] * s * weight[c];
    rstd[n] = s;
  }
}

void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                      const float* rstd, int64_t N, int64_t C) {
  detail::KernelTimer timer(KernelOp::kRmsNorm, true, N, C);
  TRI_CHECK(N >= 0 && C > 0, "rmsnorm_backward: bad sizes N={} C={}", N, C);
  // No weight gradient (a frozen norm: null): only the dinp pass runs.
  const int64_t nblocks = dweight != nullptr ? (C + kColBlock - 1) / kColBlock : 0;
#pragma omp parallel
  {
  // With xhat = x * rstd and g = weight * dout: dx = rstd * (g - xhat * mean(g * xhat)).
#pragma omp for schedule(static) nowait
  for (int64_t n = 0; n < N; ++n) {
    const float* x = inp + n * C;
    const float* dy = dout + n * C;
    const float s = rstd[n];
    float gx_mean = 0.0f;
#pragma omp simd reduction(+ : gx_mean)
    for (int64_t c = 0; c < C; ++c) gx_mean += weight[c] * dy[c] * x[c] * s;
    gx_mean /= static_cast<float>(C);
    float* dx = dinp + n * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) dx[c] += s * (weight[c] * dy[c] - x[c] * s * gx_mean);  // accumulates
  }
  // dweight += sum_n dout * xhat.
#pragma omp for schedule(static)
  for (int64_t blk = 0; blk < nblocks; ++blk) {
    const int64_t c0 = blk * kColBlock;
    const int64_t c1 = std::min(C, c0 + kColBlock);
    float dw[kColBlock] = {};
    for (int64_t n = 0; n < N; ++n) {
      const float* x = inp + n * C;
      const float* dy = dout + n * C;
      const float s = rstd[n];
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) dw[c - c0] += dy[c] * x[c] * s;
    }
    for (int64_t c = c0; c < c1; ++c) dweight[c] += dw[c - c0];
  }
  }  // omp parallel
}

}  // namespace trident::kernels
