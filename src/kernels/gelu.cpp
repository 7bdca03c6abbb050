// GELU with GPT-2's tanh approximation, forward and backward, as fused OpenMP loops.
// Uses the identity 0.5 * (1 + tanh(u)) = sigmoid(2u): one exp, no cancellation near 0.
#include "core/check.h"
#include "kernels/kernels.h"
#include "kernels/profile.h"
#include "kernels/vec_math.h"

namespace trident::kernels {
namespace {
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCubic = 0.044715f;
}  // namespace

void gelu_forward(float* out, const float* inp, int64_t n) {
  detail::KernelTimer timer(KernelOp::kGelu, false, n);
  TRI_CHECK(n >= 0, "gelu_forward: bad size n={}", n);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float x = inp[i];
    const float u = kSqrt2OverPi * (x + kCubic * x * x * x);
    // gelu(x) = 0.5 x (1 + tanh u) = x * sigmoid(2u)
    out[i] = x / (1.0f + detail::exp_approx(-2.0f * u));
  }
}

void gelu_backward(float* dinp, const float* inp, const float* dout, int64_t n) {
  detail::KernelTimer timer(KernelOp::kGelu, true, n);
  TRI_CHECK(n >= 0, "gelu_backward: bad size n={}", n);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float x = inp[i];
    const float u = kSqrt2OverPi * (x + kCubic * x * x * x);
    const float du = kSqrt2OverPi * (1.0f + 3.0f * kCubic * x * x);
    // With s = sigmoid(2u): 0.5 (1 + tanh u) = s and 0.5 sech^2(u) = 2 s (1 - s), so
    // gelu'(x) = s + x * 2 s (1 - s) * du/dx.
    const float s = 1.0f / (1.0f + detail::exp_approx(-2.0f * u));
    const float grad = s + 2.0f * x * s * (1.0f - s) * du;
    dinp[i] = grad * dout[i];  // dout[i] read in the same iteration, so dinp may alias it
  }
}

}  // namespace trident::kernels
