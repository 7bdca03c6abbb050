// Stochastic bf16 rounding of arrays, scalar and AVX-512 (see bf16_stochastic.h).
#include "kernels/bf16_stochastic.h"

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <atomic>

#include "core/rng.h"

namespace trident::kernels {
namespace {

std::atomic<bool> g_force_scalar{false};

constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;  // core/rng.cpp's Philox4x32 constants
constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;

bool cpu_has_avx512f() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
}

// The zero-masked forms with a full mask throughout: the same instructions as the unmasked
// intrinsics, which trip GCC 12's -Wmaybe-uninitialized on their undefined pass-through operand
// (as in fp16_convert.cpp and adamw.cpp).
constexpr __mmask16 kAll16 = 0xFFFF;
constexpr __mmask8 kAll8 = 0xFF;

// The high and low 32 bits of the 16 products a[l] * m (m the same in every lane).
__attribute__((target("avx512f"))) inline void mulhilo(__m512i a, __m512i m, __m512i& hi, __m512i& lo) {
  const __m512i even = _mm512_maskz_mul_epu32(kAll8, a, m);                        // lanes 0, 2, ...: 64-bit products
  const __m512i odd = _mm512_maskz_mul_epu32(kAll8, _mm512_maskz_srli_epi64(kAll8, a, 32), m);  // lanes 1, 3, ...
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_maskz_slli_epi64(kAll8, odd, 32));
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_maskz_srli_epi64(kAll8, even, 32), odd);
}

// fp32 bits u -> bf16 bits (in 32-bit lanes), rounded up by the low 16 bits of r; infinities,
// NaNs and subnormals as float_to_bf16 (nearest even) does: float_to_bf16_stochastic's cases.
__attribute__((target("avx512f"))) inline __m512i round16(__m512i u, __m512i r) {
  const __m512i exp_mask = _mm512_set1_epi32(0x7F800000);
  const __m512i e = _mm512_and_si512(u, exp_mask);
  const __mmask16 all_ones = _mm512_cmpeq_epi32_mask(e, exp_mask);  // inf or NaN
  const __mmask16 zero = _mm512_cmpeq_epi32_mask(e, _mm512_setzero_si512());  // zero, subnormal
  const __mmask16 nan = all_ones & _mm512_test_epi32_mask(u, _mm512_set1_epi32(0x007FFFFF));
  const __m512i top = _mm512_maskz_srli_epi32(kAll16, u, 16);
  __m512i out = _mm512_maskz_srli_epi32(kAll16, _mm512_maskz_add_epi32(kAll16, u, r), 16);
  out = _mm512_mask_mov_epi32(out, all_ones, top);  // inf: exact
  out = _mm512_mask_mov_epi32(out, nan, _mm512_or_si512(top, _mm512_set1_epi32(0x0040)));  // quiet NaN
  out = _mm512_mask_mov_epi32(out, zero, _mm512_and_si512(top, _mm512_set1_epi32(0x8000)));  // signed zero
  return out;
}

// 128 elements whose first has logical index 8 * block0: 16 Philox blocks, one per lane.
__attribute__((target("avx512f"))) void round128(bf16_t* out, const float* in, uint64_t block0, const PhiloxStream& s) {
  alignas(64) uint32_t lo[16], hi[16];
  for (int l = 0; l < 16; ++l) {
    const uint64_t b = block0 + static_cast<uint64_t>(l);
    lo[l] = static_cast<uint32_t>(b), hi[l] = static_cast<uint32_t>(b >> 32);
  }
  __m512i c0 = _mm512_load_si512(lo), c1 = _mm512_load_si512(hi);
  __m512i c2 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(s.counter_hi)));
  __m512i c3 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(s.counter_hi >> 32)));
  uint32_t k0 = static_cast<uint32_t>(s.key), k1 = static_cast<uint32_t>(s.key >> 32);
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(kM0)), m1 = _mm512_set1_epi32(static_cast<int>(kM1));
  for (int round = 0; round < 10; ++round) {  // core/rng.cpp's philox4x32, lane-wise
    __m512i hi0, lo0, hi1, lo1;
    mulhilo(c0, m0, hi0, lo0);
    mulhilo(c2, m1, hi1, lo1);
    const __m512i n0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1), _mm512_set1_epi32(static_cast<int>(k0)));
    const __m512i n2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), _mm512_set1_epi32(static_cast<int>(k1)));
    c0 = n0, c1 = lo1, c2 = n2, c3 = lo0;
    k0 += kW0, k1 += kW1;
  }
  // Lane k holds words 0..3 of block block0 + k; element 8k + 2w + h takes half h of word w, so
  // the words in the order (k, w) are the elements' 16-bit randoms in element order: a 4 x 16
  // transpose (within 128-bit lanes, then across them).
  const __m512i t0 = _mm512_maskz_unpacklo_epi32(kAll16, c0, c1), t1 = _mm512_maskz_unpackhi_epi32(kAll16, c0, c1);
  const __m512i t2 = _mm512_maskz_unpacklo_epi32(kAll16, c2, c3), t3 = _mm512_maskz_unpackhi_epi32(kAll16, c2, c3);
  const __m512i u0 = _mm512_maskz_unpacklo_epi64(kAll8, t0, t2), u1 = _mm512_maskz_unpackhi_epi64(kAll8, t0, t2);  // blocks 4L, 4L+1
  const __m512i u2 = _mm512_maskz_unpacklo_epi64(kAll8, t1, t3), u3 = _mm512_maskz_unpackhi_epi64(kAll8, t1, t3);  // blocks 4L+2, 4L+3
  const __m512i v0 = _mm512_maskz_shuffle_i32x4(kAll16, u0, u1, _MM_SHUFFLE(1, 0, 1, 0));
  const __m512i v1 = _mm512_maskz_shuffle_i32x4(kAll16, u0, u1, _MM_SHUFFLE(3, 2, 3, 2));
  const __m512i v2 = _mm512_maskz_shuffle_i32x4(kAll16, u2, u3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m512i v3 = _mm512_maskz_shuffle_i32x4(kAll16, u2, u3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m512i r[4] = {_mm512_maskz_shuffle_i32x4(kAll16, v0, v2, _MM_SHUFFLE(2, 0, 2, 0)),
                        _mm512_maskz_shuffle_i32x4(kAll16, v0, v2, _MM_SHUFFLE(3, 1, 3, 1)),
                        _mm512_maskz_shuffle_i32x4(kAll16, v1, v3, _MM_SHUFFLE(2, 0, 2, 0)),
                        _mm512_maskz_shuffle_i32x4(kAll16, v1, v3, _MM_SHUFFLE(3, 1, 3, 1))};
  for (int q = 0; q < 4; ++q) {  // r[q]: the randoms of elements 32q .. 32q + 31
    for (int half = 0; half < 2; ++half) {
      const __m256i bits16 = half == 0 ? _mm512_maskz_extracti64x4_epi64(0xF, r[q], 0) : _mm512_maskz_extracti64x4_epi64(0xF, r[q], 1);
      const int64_t at = 32 * q + 16 * half;
      const __m512i u = _mm512_castps_si512(_mm512_loadu_ps(in + at));
      const __m512i b = round16(u, _mm512_maskz_cvtepu16_epi32(kAll16, bits16));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + at), _mm512_maskz_cvtepi32_epi16(kAll16, b));
    }
  }
}

__attribute__((target("avx512f"))) void round_avx512(bf16_t* out, const float* in, int64_t n, uint64_t first,
                                                     const PhiloxStream& s) {
  // Scalar up to the first index that starts a Philox block, 128 at a time, scalar tail.
  const int64_t head = std::min<int64_t>(n, static_cast<int64_t>((8 - (first & 7)) & 7));
  round_to_bf16_stochastic_scalar(out, in, head, first, s);
  int64_t i = head;
  for (; i + 128 <= n; i += 128) round128(out + i, in + i, (first + static_cast<uint64_t>(i)) >> 3, s);
  round_to_bf16_stochastic_scalar(out + i, in + i, n - i, first + static_cast<uint64_t>(i), s);
}

}  // namespace

uint32_t PhiloxRoundingBits::at(uint64_t index) {
  const uint64_t block = index >> 3;
  if (!valid_ || block != block_) {
    const std::array<uint32_t, 4> w =
        philox4x32({static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                    static_cast<uint32_t>(s_.counter_hi), static_cast<uint32_t>(s_.counter_hi >> 32)},
                   {static_cast<uint32_t>(s_.key), static_cast<uint32_t>(s_.key >> 32)});
    std::copy(w.begin(), w.end(), words_);
    block_ = block;
    valid_ = true;
  }
  return (words_[(index >> 1) & 3] >> (16 * (index & 1))) & 0xFFFFu;
}

void round_to_bf16_stochastic_scalar(bf16_t* out, const float* in, int64_t n, uint64_t first, const PhiloxStream& s) {
  PhiloxRoundingBits bits(s);
  for (int64_t i = 0; i < n; ++i) out[i] = float_to_bf16_stochastic(in[i], bits.at(first + static_cast<uint64_t>(i)));
}

bool stochastic_rounding_vectorised() { return cpu_has_avx512f() && !g_force_scalar.load(std::memory_order_relaxed); }

void force_scalar_stochastic_rounding(bool on) { g_force_scalar.store(on, std::memory_order_relaxed); }

void round_to_bf16_stochastic(bf16_t* out, const float* in, int64_t n, uint64_t first, const PhiloxStream& s) {
  if (stochastic_rounding_vectorised()) return round_avx512(out, in, n, first, s);
  round_to_bf16_stochastic_scalar(out, in, n, first, s);
}

}  // namespace trident::kernels
