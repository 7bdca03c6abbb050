// LayerNorm over the last dimension (eps 1e-5), forward and backward, as fused OpenMP loops.
// The backward's parameter gradients are reduced per channel, so they are deterministic.
#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "kernels/kernels.h"
#include "kernels/profile.h"

namespace trident::kernels {
namespace {
constexpr float kEps = 1e-5f;
constexpr int64_t kColBlock = 64;  // channels per task in the dweight/dbias reduction
}  // namespace

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                       const float* weight, const float* bias, int64_t N, int64_t C) {
  detail::KernelTimer timer(KernelOp::kLayerNorm, false, N, C);
  TRI_CHECK(N >= 0 && C > 0, "layernorm_forward: bad sizes N={} C={}", N, C);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* x = inp + n * C;
    // Two passes (mean, then centred variance) rather than E[x^2] - E[x]^2, which cancels
    // badly when |mean| >> std; the row is in L1 for the second pass.
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < C; ++c) sum += x[c];
    const float m = sum / static_cast<float>(C);
    float var = 0.0f;
#pragma omp simd reduction(+ : var)
    for (int64_t c = 0; c < C; ++c) {
      const float d = x[c] - m;
      var += d * d;
    }
    const float s = 1.0f / std::sqrt(var / static_cast<float>(C) + kEps);
    float* o = out + n * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) o[c] = (x[c] - m) * s * weight[c] + bias[c];
    mean[n] = m;
    rstd[n] = s;
  }
}

void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean,
                        const float* rstd, int64_t N, int64_t C) {
  detail::KernelTimer timer(KernelOp::kLayerNorm, true, N, C);
  TRI_CHECK(N >= 0 && C > 0, "layernorm_backward: bad sizes N={} C={}", N, C);
  // One parallel region for both passes (one fork/join per call instead of two).
  // No weight or bias gradient (a frozen norm: null pointers): only the dinp pass runs.
  const int64_t nblocks = dweight != nullptr || dbias != nullptr ? (C + kColBlock - 1) / kColBlock : 0;
#pragma omp parallel
  {
  // dinp, row by row: with xhat = (x - mean) * rstd and g = weight * dout,
  // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
#pragma omp for schedule(static) nowait
  for (int64_t n = 0; n < N; ++n) {
    const float* x = inp + n * C;
    const float* dy = dout + n * C;
    const float m = mean[n];
    const float s = rstd[n];
    float g_mean = 0.0f;
    float gx_mean = 0.0f;
#pragma omp simd reduction(+ : g_mean, gx_mean)
    for (int64_t c = 0; c < C; ++c) {
      const float g = weight[c] * dy[c];
      g_mean += g;
      gx_mean += g * (x[c] - m) * s;
    }
    g_mean /= static_cast<float>(C);
    gx_mean /= static_cast<float>(C);
    float* dx = dinp + n * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const float xhat = (x[c] - m) * s;
      dx[c] += s * (weight[c] * dy[c] - g_mean - xhat * gx_mean);  // accumulates
    }
  }
  // dweight += sum_n dout * xhat, dbias += sum_n dout: parallel over channel blocks, rows in
  // order, so the sums do not depend on the thread count. Independent of the dinp pass
  // (it reads only inputs; dinp never aliases dout or inp), hence the nowait above.
#pragma omp for schedule(static)
  for (int64_t blk = 0; blk < nblocks; ++blk) {
    const int64_t c0 = blk * kColBlock;
    const int64_t c1 = std::min(C, c0 + kColBlock);
    float dw[kColBlock] = {};
    float db[kColBlock] = {};
    for (int64_t n = 0; n < N; ++n) {
      const float* x = inp + n * C;
      const float* dy = dout + n * C;
      const float m = mean[n];
      const float s = rstd[n];
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) {
        dw[c - c0] += dy[c] * ((x[c] - m) * s);
        db[c - c0] += dy[c];
      }
    }
    for (int64_t c = c0; c < c1; ++c) {
      if (dweight != nullptr) dweight[c] += dw[c - c0];
      if (dbias != nullptr) dbias[c] += db[c - c0];
    }
  }
  }  // omp parallel
}

}  // namespace trident::kernels
