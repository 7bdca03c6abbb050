// Rounding whole arrays to fp16 values (see fp16.h).
#include <immintrin.h>

#include "core/check.h"
#include "kernels/parallel_blocks.h"
#include "kernels/fp16.h"

namespace trident::kernels {
namespace {

bool cpu_has_avx512f() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f");
}

// vcvtps2ph with an explicit round-to-nearest-even immediate (MXCSR is not consulted), then
// back: exact, as fp16 -> fp32 always is. The zero-masked forms with a full mask are the same
// instructions; the unmasked intrinsics trip GCC 12's -Wmaybe-uninitialized on their
// undefined pass-through operand.
[[gnu::target("avx512f")]] void round_avx512(float* out, const float* in, int64_t begin, int64_t end) {
  int64_t i = begin;
  for (; i + 16 <= end; i += 16) {
    const __m256i h = _mm512_maskz_cvtps_ph(0xFFFF, _mm512_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm512_storeu_ps(out + i, _mm512_maskz_cvtph_ps(0xFFFF, h));
  }
  for (; i < end; ++i) out[i] = round_to_fp16(in[i]);
}

}  // namespace

void round_to_fp16(float* out, const float* in, int64_t n) {
  TRI_CHECK(n >= 0, "round_to_fp16: bad size {}", n);
  static const bool fast = cpu_has_avx512f();  // a CPU property, fixed for the process
  for_each_block(n, [&](int64_t b, int64_t e) {
    if (fast) {
      round_avx512(out, in, b, e);
    } else {
      for (int64_t i = b; i < e; ++i) out[i] = round_to_fp16(in[i]);
    }
  });
}

}  // namespace trident::kernels
