// Array conversions between fp32 and bf16 (see bf16.h). The AVX-512 BF16 path
// (vcvtne2ps2bf16: round to nearest even, NaN quieted) gives the same bits as the scalar
// float_to_bf16, which the unit test checks on every class of value.
#include <immintrin.h>

#include "core/check.h"
#include "kernels/parallel_blocks.h"
#include "kernels/bf16.h"

namespace trident::kernels {
namespace {

[[gnu::target("avx512f,avx512bf16")]] void to_bf16_avx512(bf16_t* out, const float* in, int64_t begin, int64_t end) {
  int64_t i = begin;
  for (; i + 32 <= end; i += 32) {
    const __m512 lo = _mm512_loadu_ps(in + i), hi = _mm512_loadu_ps(in + i + 16);
    const __m512bh packed = _mm512_cvtne2ps_pbh(hi, lo);
    _mm512_storeu_si512(reinterpret_cast<void*>(out + i), reinterpret_cast<__m512i>(packed));
  }
  for (; i < end; ++i) out[i] = float_to_bf16(in[i]);
}

}  // namespace

bool cpu_has_avx512_bf16() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
}

void convert_to_bf16(bf16_t* out, const float* in, int64_t n) {
  TRI_CHECK(n >= 0, "convert_to_bf16: bad size {}", n);
  static const bool fast = cpu_has_avx512_bf16();  // a CPU property, fixed for the process
  for_each_block(n, [&](int64_t b, int64_t e) {
    if (fast) {
      to_bf16_avx512(out, in, b, e);
    } else {
      for (int64_t i = b; i < e; ++i) out[i] = float_to_bf16(in[i]);
    }
  });
}

void convert_from_bf16(float* out, const bf16_t* in, int64_t n) {
  TRI_CHECK(n >= 0, "convert_from_bf16: bad size {}", n);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_float(in[i]);
}

}  // namespace trident::kernels
