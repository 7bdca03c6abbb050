// Softmax cross-entropy over the vocabulary fused with its backward: one row at a time, the
// logits are overwritten in place by their gradient, so no second (N, Vp) buffer exists.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/check.h"
#include "kernels/kernels.h"
#include "kernels/profile.h"
#include "kernels/vec_math.h"

namespace trident::kernels {

void crossentropy_softmax_forward_backward(float* losses, float* logits, const int32_t* targets,
                                           int64_t N, int64_t V, int64_t Vp, float dloss) {
  detail::KernelTimer timer(KernelOp::kCrossEntropy, false, N, V, Vp);
  TRI_CHECK(N >= 0 && V > 0 && Vp >= V, "crossentropy: bad sizes N={} V={} Vp={}", N, V, Vp);
  // Validate targets before the parallel loop (an exception must not escape an OpenMP region).
  for (int64_t n = 0; n < N; ++n) {
    TRI_CHECK(targets[n] < V, "crossentropy: target {} at row {} is outside the vocabulary of {}",
              targets[n], n, V);
  }
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    float* x = logits + n * Vp;
    const int32_t target = targets[n];
    if (target < 0) {  // ignored position: no loss, no gradient
      losses[n] = 0.0f;
      std::memset(x, 0, static_cast<size_t>(Vp) * sizeof(float));
      continue;
    }
    float maxv = -INFINITY;
#pragma omp simd reduction(max : maxv)
    for (int64_t i = 0; i < V; ++i) maxv = x[i] > maxv ? x[i] : maxv;
    const float target_logit = x[target];
    // Pass 2 stores exp(x - max) in place and sums it: in float within blocks of 1024 (a
    // mixed float/double SIMD reduction runs ~8x slower here), block sums in double. The row
    // (200 KB) stays in L2 for pass 3, so the extra passes cost little next to the exps.
    double sum = 0.0;
    constexpr int64_t kSumBlock = 1024;
    for (int64_t i0 = 0; i0 < V; i0 += kSumBlock) {
      const int64_t i1 = std::min(V, i0 + kSumBlock);
      float block_sum = 0.0f;
#pragma omp simd reduction(+ : block_sum)
      for (int64_t i = i0; i < i1; ++i) {
        const float e = detail::exp_approx(x[i] - maxv);
        x[i] = e;
        block_sum += e;
      }
      sum += block_sum;
    }
    losses[n] = static_cast<float>(std::log(sum) - static_cast<double>(target_logit - maxv));
    const float scale = static_cast<float>(static_cast<double>(dloss) / sum);
#pragma omp simd
    for (int64_t i = 0; i < V; ++i) x[i] *= scale;
    x[target] -= dloss;
    for (int64_t i = V; i < Vp; ++i) x[i] = 0.0f;
  }
}

}  // namespace trident::kernels
