// The two 16-bit storage formats a tensor at rest can take (--grad-dtype bf16|fp16: the
// gradient shard, parallel/grad_shard.h): bf16 (kernels/bf16.h) or IEEE fp16 (kernels/fp16.h),
// as 16-bit words. One rounding to nearest even on the way in, an exact widening on the way
// out; the arithmetic stays fp32.
#pragma once

#include <cstdint>

#include "kernels/bf16.h"
#include "kernels/fp16.h"

namespace trident::kernels {

enum class Half { kBf16, kFp16 };

inline float widen_half(Half h, uint16_t w) { return h == Half::kBf16 ? bf16_to_float(w) : fp16_bits_to_float(w); }
inline uint16_t round_half(Half h, float f) { return h == Half::kBf16 ? float_to_bf16(f) : float_to_fp16_bits(f); }

// out[i] = the fp32 value of in[i] (exact). Scalar: callers run it inside their own OpenMP loops.
inline void widen_half(Half h, const uint16_t* in, int64_t n, float* out) {
  if (h == Half::kBf16) {
    for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_float(in[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = fp16_bits_to_float(in[i]);
  }
}

}  // namespace trident::kernels
