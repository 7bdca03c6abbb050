// SwiGLU, Llama's MLP activation: silu(gate) * up, forward and backward, fused OpenMP loops.
#include "core/check.h"
#include "kernels/kernels.h"
#include "kernels/profile.h"
#include "kernels/vec_math.h"

namespace trident::kernels {

namespace {
// One element each: the scalar formulas every variant below shares, so packed and separate
// operands give bitwise the same values.
inline float silu_times(float g, float u) { return g / (1.0f + detail::exp_approx(-g)) * u; }
inline void swiglu_grads(float g, float u, float dy, float& dg, float& du) {
  // With s = sigmoid(g): silu(g) = g s and silu'(g) = s (1 + g (1 - s)).
  const float s = 1.0f / (1.0f + detail::exp_approx(-g));
  dg = dy * u * s * (1.0f + g * (1.0f - s));
  du = dy * g * s;
}
}  // namespace

void swiglu_forward(float* out, const float* gate, const float* up, int64_t n) {
  detail::KernelTimer timer(KernelOp::kSwiGlu, false, n);
  TRI_CHECK(n >= 0, "swiglu_forward: bad size n={}", n);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    out[i] = silu_times(gate[i], up[i]);
  }
}

void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n) {
  detail::KernelTimer timer(KernelOp::kSwiGlu, true, n);
  TRI_CHECK(n >= 0, "swiglu_backward: bad size n={}", n);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    swiglu_grads(gate[i], up[i], dout[i], dgate[i], dup[i]);
  }
}

void swiglu_packed_forward(float* out, const float* gu, int64_t N, int64_t I) {
  detail::KernelTimer timer(KernelOp::kSwiGlu, false, N * I);
  TRI_CHECK(N >= 0 && I >= 0, "swiglu_packed_forward: bad sizes N={} I={}", N, I);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* g = gu + n * 2 * I;
    const float* u = g + I;
    float* o = out + n * I;
#pragma omp simd
    for (int64_t i = 0; i < I; ++i) o[i] = silu_times(g[i], u[i]);
  }
}

void swiglu_packed_backward(float* dgu, const float* dout, const float* gu, int64_t N, int64_t I) {
  detail::KernelTimer timer(KernelOp::kSwiGlu, true, N * I);
  TRI_CHECK(N >= 0 && I >= 0, "swiglu_packed_backward: bad sizes N={} I={}", N, I);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* g = gu + n * 2 * I;
    const float* u = g + I;
    const float* dy = dout + n * I;
    float* dg = dgu + n * 2 * I;
    float* du = dg + I;
#pragma omp simd
    for (int64_t i = 0; i < I; ++i) swiglu_grads(g[i], u[i], dy[i], dg[i], du[i]);
  }
}

}  // namespace trident::kernels
