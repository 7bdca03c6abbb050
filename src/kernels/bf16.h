// bfloat16 storage: the top 16 bits of an fp32 (8-bit exponent, 7-bit mantissa). Conversions
// fp32 -> bf16 round to nearest, ties to even (NaN stays a quiet NaN, infinities stay
// infinite, subnormals flush to signed zero as the hardware instruction does), or stochastically from caller-supplied random bits (llm.c's master-weight cast,
// unbiased in expectation); bf16 -> fp32 is exact. Math is never done in bf16: kernels widen to
// fp32 and accumulate there.
#pragma once

#include <cstdint>
#include <cstring>

namespace trident::kernels {

using bf16_t = uint16_t;

inline float bf16_to_float(bf16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline bf16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7F800000u) == 0x7F800000u && (u & 0x007FFFFFu) != 0) {
    return static_cast<bf16_t>((u >> 16) | 0x0040u);  // NaN: keep the sign, force quiet
  }
  // Subnormal inputs (|f| < 2^-126) become signed zero, as AVX-512 BF16's vcvtne2ps2bf16 does,
  // so every CPU converts to the same bits.
  if ((u & 0x7F800000u) == 0) return static_cast<bf16_t>((u >> 16) & 0x8000u);
  u += 0x7FFFu + ((u >> 16) & 1u);  // round half to even; overflow carries into inf correctly
  return static_cast<bf16_t>(u >> 16);
}

// Rounds up with probability (dropped low 16 bits) / 2^16, using the low 16 bits of `random`.
inline bf16_t float_to_bf16_stochastic(float f, uint32_t random) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7F800000u) == 0x7F800000u || (u & 0x7F800000u) == 0) return float_to_bf16(f);  // inf, NaN, subnormal
  u += random & 0xFFFFu;
  return static_cast<bf16_t>(u >> 16);
}

// True when this CPU executes AVX-512 BF16 together with the AVX-512 F/BW/VL instructions the
// vector conversions and the bf16 GEMM (gemm_bf16_avx512.h) use alongside it.
bool cpu_has_avx512_bf16();

// Whole arrays (OpenMP; the fp32 -> bf16 direction uses AVX-512 BF16 instructions where the
// CPU has them, with identical results).
void convert_to_bf16(bf16_t* out, const float* in, int64_t n);
void convert_from_bf16(float* out, const bf16_t* in, int64_t n);

}  // namespace trident::kernels
