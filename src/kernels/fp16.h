// IEEE binary16 (fp16: 5-bit exponent, 10-bit mantissa, largest finite 65504) as a rounding
// step inside fp32 math. --precision fp16 never stores fp16: it rounds each matmul operand to
// the nearest fp16 value (ties to even; beyond 65504 it becomes inf, below 2^-24 it becomes
// zero, fp16 subnormals are kept, NaN stays NaN) and keeps that value as an fp32, which holds
// it exactly. A product of two such values has at most 22 significant bits, so an fp32 GEMM
// over them is exact per product and accumulates in fp32: the numerics of an fp16 tensor-core
// matmul with fp32 accumulation, on any CPU. The overflow to inf is the point: it is what
// dynamic loss scaling (optim/loss_scaler.h) detects and backs off from.
#pragma once

#include <cstdint>
#include <cstring>

namespace trident::kernels {

// The fp16 bit pattern nearest to f (round to nearest, ties to even).
inline uint16_t float_to_fp16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return static_cast<uint16_t>(sign | 0x7E00u);  // NaN: quiet
  if (a >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // >= 65520 (or inf): inf
  if (a < 0x38800000u) {  // below 2^-14: an fp16 subnormal, in units of 2^-24
    float mag;
    std::memcpy(&mag, &a, sizeof mag);
    // mag * 2^24 is exact; adding 2^23 rounds it to an integer, ties to even (the default
    // rounding mode), and leaves that integer in the low mantissa bits.
    const float shifted = mag * 16777216.0f + 8388608.0f;
    uint32_t s;
    std::memcpy(&s, &shifted, sizeof s);
    return static_cast<uint16_t>(sign | (s - 0x4B000000u));
  }
  // Normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits to even.
  const uint32_t odd = (a >> 13) & 1u;
  return static_cast<uint16_t>(sign | ((a + 0xC8000FFFu + odd) >> 13));
}

inline float fp16_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
  uint32_t u;
  if (e == 0x1F) {
    u = sign | 0x7F800000u | (m << 13);
  } else if (e == 0) {  // zero or subnormal: m * 2^-24, exact in fp32
    float f = static_cast<float>(m) * 5.9604644775390625e-8f;
    std::memcpy(&u, &f, sizeof u);
    u |= sign;
  } else {
    u = sign | ((e + 112u) << 23) | (m << 13);
  }
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// f rounded to the nearest fp16 value, as an fp32.
inline float round_to_fp16(float f) { return fp16_bits_to_float(float_to_fp16_bits(f)); }

// Whole arrays (OpenMP; AVX-512F's vcvtps2ph/vcvtph2ps where the CPU has them, with the same
// results as the scalar functions above, which the unit test checks on every class of value).
void round_to_fp16(float* out, const float* in, int64_t n);

}  // namespace trident::kernels
