// bf16 rounding and rank-ordered fp32 sums for the bf16 gradient collectives (see bf16_sum.h).
// Single-threaded (the communicator's worker thread) but vectorised: AVX-512 BF16's
// vcvtne2ps2bf16 where the CPU has it (the same bits as kernels::float_to_bf16, which
// kernels_bf16_test checks), and the sum as rank-outer / element-inner loops over an fp32
// accumulator, so each element still adds its ranks in order 0, 1, ..., N-1.
#include "comm/bf16_sum.h"

#include <immintrin.h>

#include <vector>

namespace trident::comm {
namespace {

[[gnu::target("avx512f,avx512bf16")]] void round_avx512(const float* x, int64_t n, kernels::bf16_t* out) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 lo = _mm512_loadu_ps(x + i), hi = _mm512_loadu_ps(x + i + 16);
    const __m512bh packed = _mm512_cvtne2ps_pbh(hi, lo);
    _mm512_storeu_si512(reinterpret_cast<void*>(out + i), reinterpret_cast<__m512i>(packed));
  }
  for (; i < n; ++i) out[i] = kernels::float_to_bf16(x[i]);
}

}  // namespace

void round_to_bf16(const float* x, int64_t n, kernels::bf16_t* out) {
  static const bool fast = kernels::cpu_has_avx512_bf16();  // a CPU property, fixed for the process
  if (fast) {
    round_avx512(x, n, out);
    return;
  }
  for (int64_t i = 0; i < n; ++i) out[i] = kernels::float_to_bf16(x[i]);
}

void widen_from_bf16(const kernels::bf16_t* in, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = kernels::bf16_to_float(in[i]);
}

void sum_bf16_chunks(const kernels::bf16_t* in, int parts, int64_t n, kernels::bf16_t* out) {
  std::vector<float> acc(static_cast<std::size_t>(n), 0.0f);
  for (int s = 0; s < parts; ++s) {
    const kernels::bf16_t* chunk = in + static_cast<int64_t>(s) * n;
    for (int64_t i = 0; i < n; ++i) acc[static_cast<std::size_t>(i)] += kernels::bf16_to_float(chunk[i]);
  }
  round_to_bf16(acc.data(), n, out);
}

}  // namespace trident::comm
