// Rotary position embedding in Hugging Face's rotate-half convention (LlamaRotaryEmbedding +
// apply_rotary_pos_emb), forward and backward, in place. The angles are computed in double
// and rounded once, so cos/sin are correctly rounded fp32 values at every position (HF
// computes them in fp32, which loses precision at large positions).
#include <cmath>
#include <vector>

#include "core/check.h"
#include "kernels/kernels.h"
#include "kernels/profile.h"

namespace trident::kernels {
namespace {

// cos/sin tables (T, HS/2) for positions pos0 .. pos0 + T - 1.
struct RopeTables {
  std::vector<float> cos, sin;
  RopeTables(int64_t T, int64_t half, float theta, int64_t pos0)
      : cos(static_cast<size_t>(T * half)), sin(static_cast<size_t>(T * half)) {
    for (int64_t i = 0; i < half; ++i) {
      const double inv_freq = std::pow(static_cast<double>(theta), -2.0 * static_cast<double>(i) /
                                                                        static_cast<double>(2 * half));
      for (int64_t t = 0; t < T; ++t) {
        const double a = static_cast<double>(pos0 + t) * inv_freq;
        cos[static_cast<size_t>(t * half + i)] = static_cast<float>(std::cos(a));
        sin[static_cast<size_t>(t * half + i)] = static_cast<float>(std::sin(a));
      }
    }
  }
};

// sign +1: the forward rotation; -1: its inverse (the backward, since a rotation's
// transpose is its inverse).
void rotate(float* x, int64_t B, int64_t T, int64_t heads, int64_t HS, int64_t stride, float theta, int64_t pos0,
            float sign, bool backward) {
  detail::KernelTimer timer(KernelOp::kRope, backward, B * T, heads, HS);
  TRI_CHECK(B >= 0 && T >= 0 && heads > 0 && HS > 0 && HS % 2 == 0 && stride >= heads * HS && theta > 0.0f &&
                pos0 >= 0,
            "rope: bad sizes B={} T={} heads={} HS={} (must be even) stride={} theta={} pos0={}", B, T, heads, HS,
            stride, theta, pos0);
  const int64_t half = HS / 2;
  const RopeTables tab(T, half, theta, pos0);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < B * T; ++n) {
    const float* c = tab.cos.data() + (n % T) * half;
    const float* s = tab.sin.data() + (n % T) * half;
    for (int64_t h = 0; h < heads; ++h) {
      float* lo = x + n * stride + h * HS;
      float* hi = lo + half;
#pragma omp simd
      for (int64_t i = 0; i < half; ++i) {
        const float a = lo[i], b = hi[i], sn = sign * s[i];
        lo[i] = a * c[i] - b * sn;
        hi[i] = b * c[i] + a * sn;
      }
    }
  }
}

}  // namespace

void rope_forward(float* x, int64_t B, int64_t T, int64_t heads, int64_t HS, int64_t stride, float theta,
                  int64_t pos0) {
  rotate(x, B, T, heads, HS, stride, theta, pos0, 1.0f, false);
}

void rope_backward(float* dx, int64_t B, int64_t T, int64_t heads, int64_t HS, int64_t stride, float theta,
                   int64_t pos0) {
  rotate(dx, B, T, heads, HS, stride, theta, pos0, -1.0f, true);
}

}  // namespace trident::kernels
