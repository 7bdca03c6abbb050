// Vectorisable float exp and sigmoid for the kernels' inner loops (private to kernels/).
// glibc's expf is only vectorised under -ffast-math, and cross-entropy alone evaluates
// N * V (~51M per step) of them, so a branch-free polynomial the compiler can vectorise
// matters; accuracy is within ~2 ulp of expf over the clamped range.
#pragma once

#include <bit>
#include <cstdint>

namespace trident::kernels::detail {

// exp(x) by Cephes' range reduction: x = n ln2 + r, |r| <= ln2/2, exp(r) by a degree-6
// polynomial, 2^n built directly in the exponent bits. Inputs are clamped to
// [-87.33, 88.72] so 2^n stays a normal float: exp of very negative x returns ~1e-38
// instead of 0 and never inf, which is harmless for softmax (the max term is exp(0) = 1).
inline float exp_approx(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;    // ln2 split in two so n*ln2 stays exact
  constexpr float kLn2Lo = -2.12194440e-4f;
  x = x < -87.33f ? -87.33f : x;
  x = x > 88.72f ? 88.72f : x;
  // Round to nearest by the 1.5 * 2^23 trick: floorf/rintf would not vectorise without
  // -fno-trapping-math, which the build does not set.
  constexpr float kRound = 12582912.0f;
  const float n = (x * kLog2e + kRound) - kRound;
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return p * std::bit_cast<float>(bits);  // bits = 2^n
}

}  // namespace trident::kernels::detail
