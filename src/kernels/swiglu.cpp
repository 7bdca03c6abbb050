// SwiGLU, Llama's MLP activation: silu(gate) * up, forward and backward, fused OpenMP loops.
#include "core/check.h"
#include "kernels/kernels.h"
#include "kernels/profile.h"
#include "kernels/vec_math.h"

namespace trident::kernels {

void swiglu_forward(float* out, const float* gate, const float* up, int64_t n) {
  detail::KernelTimer timer(KernelOp::kSwiGlu, false, n);
  TRI_CHECK(n >= 0, "swiglu_forward: bad size n={}", n);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + detail::exp_approx(-g)) * up[i];
  }
}

void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n) {
  detail::KernelTimer timer(KernelOp::kSwiGlu, true, n);
  TRI_CHECK(n >= 0, "swiglu_backward: bad size n={}", n);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i], u = up[i], dy = dout[i];
    // With s = sigmoid(g): silu(g) = g s and silu'(g) = s (1 + g (1 - s)).
    const float s = 1.0f / (1.0f + detail::exp_approx(-g));
    dgate[i] = dy * u * s * (1.0f + g * (1.0f - s));
    dup[i] = dy * g * s;
  }
}

}  // namespace trident::kernels
