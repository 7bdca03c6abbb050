// The AVX-512 BF16 GEMM (see gemm_bf16_avx512.h). Goto/BLIS structure:
//   for each kNc columns of B, for each kKc-deep slice of k:
//     pack that slice of B into kNr-column panels, then for each kMc rows of A:
//       pack those rows into kMr-row panels (L2), then for each B panel, for each A panel:
//       one kMr x kNr micro-tile of C in 24 zmm accumulators.
// vdpbf16ps multiplies pairs: lane j of the accumulator gains a.lo*b.lo + a.hi*b.hi, where
// the 32-bit lane j of each source holds two consecutive k of one row/column. So both panels
// store, for every pair of k (p = k / 2), one 32-bit word per row (A) or column (B):
// low half k = 2p, high half k = 2p + 1 (zero past the end of k). A's word is broadcast, B's
// 16 words are one vector: 3 loads and 8 broadcasts feed 24 vdpbf16ps per pair.
//
// Everything that executes AVX-512 carries a target attribute instead of per-file -m flags, so
// no inline function from a shared header is ever emitted here with AVX-512 instructions and
// picked by the linker for a CPU without them.
#include "kernels/gemm_bf16_avx512.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstring>

namespace trident::kernels {
namespace {

#define TRI_AVX512_BF16 [[gnu::target("avx512f,avx512bw,avx512vl,avx512bf16")]]

constexpr int kMr = 8;         // rows per micro-tile: broadcasts of A
constexpr int kNv = 3;         // zmm accumulators per row, 16 fp32 columns each: 24 in all
constexpr int kNr = 16 * kNv;  // columns per micro-tile
constexpr int64_t kKc = 768;   // k per slice (even, so only the last slice has an unpaired k)
constexpr int64_t kMc = 96;    // rows of A packed at once: 144 KiB, in L2 (1 MiB)
constexpr int64_t kNc = 1536;  // columns of B packed at once: 2.3 MiB, in L3
// Block sizes measured on Zen 5 (bench/bf16_matmul shapes): a kKc of 256, whose B panel
// (kKc/2 x kNr words) fits L1, ran 10-30% slower than 768, whose 72 KiB panel streams from L2
// (3 vector loads per 24 vdpbf16ps, 16 bytes a cycle, far below L2's bandwidth): C is read
// and written once per slice, and C of a training matmul is larger than the caches.
static_assert(kMr % 8 == 0 && kNr % 8 == 0, "pack_panel writes panels in groups of 8 words");

// Products smaller than this (multiply-adds) are not worth waking a second thread for.
constexpr double kMinParallelMacs = 1 << 20;

// A view of op(X) as rows (the dimension kept: m of A, n of B) by k, with pairs of k packed.
// `k_contiguous`: X stores k along its rows (A untransposed, B transposed), so a pair is one
// unaligned 32-bit load; otherwise consecutive k are consecutive rows of X and are interleaved.
struct Operand {
  const bf16_t* data;
  int64_t ld;
  bool k_contiguous;
  const bf16_t* at(int64_t row, int64_t k) const { return k_contiguous ? data + row * ld + k : data + k * ld + row; }
};

// Prefetches the line `offset` elements past p, computed as an integer: the address may lie
// past the matrix, which a prefetch ignores but pointer arithmetic must not produce.
inline void prefetch(const bf16_t* p, int64_t offset) {
  __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(p) +
                                                   static_cast<uintptr_t>(offset * int64_t{sizeof(bf16_t)})));
}

// Transposes an 8 x 8 matrix of 32-bit words held one row per register.
TRI_AVX512_BF16 inline void transpose8x8(__m256i r[8]) {
  __m256i t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_unpacklo_epi64(t[i], t[i + 2]);
    u[i + 1] = _mm256_unpackhi_epi64(t[i], t[i + 2]);
    u[i + 2] = _mm256_unpacklo_epi64(t[i + 1], t[i + 3]);
    u[i + 3] = _mm256_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2x128_si256(u[i], u[i + 4], 0x20);
    r[i + 4] = _mm256_permute2x128_si256(u[i], u[i + 4], 0x31);
  }
}

// Packs rows r0 .. r0+width of op(X), k0 .. k0+kc, into out[p * W + j] (W = panel width, a
// multiple of 8; rows past `width` and the missing partner of an unpaired last k are zero).
TRI_AVX512_BF16 void pack_panel(uint32_t* out, const Operand& x, int64_t r0, int64_t width, int64_t k0, int64_t kc,
                                int W) {
  const int64_t pairs = kc / 2;
  const bool odd = (kc & 1) != 0;
  if (x.k_contiguous) {
    // Row j's pairs are consecutive words: load 8 words from each of 8 rows and transpose.
    for (int j = 0; j < W; j += 8) {
      const int live = static_cast<int>(std::clamp<int64_t>(width - j, 0, 8));
      if (live == 0) {
        for (int64_t p = 0; p < pairs + (odd ? 1 : 0); ++p) std::fill_n(out + p * W + j, 8, 0u);
        continue;
      }
      for (int64_t p = 0; p < pairs; p += 8) {
        const int64_t n = std::min<int64_t>(8, pairs - p);
        const __mmask8 m = static_cast<__mmask8>((1u << n) - 1);
        __m256i r[8];
#pragma GCC unroll 8
        for (int i = 0; i < 8; ++i) {
          // Rows past `width` load nothing (mask 0) from the last live row's address.
          r[i] = _mm256_maskz_loadu_epi32(i < live ? m : __mmask8(0), x.at(r0 + j + std::min(i, live - 1), k0 + 2 * p));
          // The next 8 rows' same words: these rows are short runs (kKc bf16) far apart, too
          // short for the hardware prefetcher to catch. A prefetch never faults.
          prefetch(x.at(r0 + j + std::min(i, live - 1), k0 + 2 * p), 8 * x.ld);
        }
        transpose8x8(r);
        for (int64_t i = 0; i < n; ++i) {
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (p + i) * W + j), r[i]);
        }
      }
      if (odd) {
        for (int i = 0; i < 8; ++i) out[pairs * W + j + i] = i < live ? *x.at(r0 + j + i, k0 + kc - 1) : 0u;
      }
    }
    return;
  }
  // k runs down X's rows: interleave two rows of X, 8 columns at a time.
  const __m256i interleave = _mm256_set_epi16(15, 7, 14, 6, 13, 5, 12, 4, 11, 3, 10, 2, 9, 1, 8, 0);
  constexpr int64_t kAhead = 4;  // pairs of rows prefetched ahead, as above
  for (int64_t p = 0; p < pairs + (odd ? 1 : 0); ++p) {
    const bf16_t* lo = x.at(r0, k0 + 2 * p);
    const bool has_hi = 2 * p + 1 < kc;
    for (int j = 0; j < W; j += 32) {
      prefetch(lo + j, 2 * kAhead * x.ld);
      prefetch(lo + j, (2 * kAhead + 1) * x.ld);
    }
    for (int j = 0; j < W; j += 8) {
      const int64_t left = width - j;
      const __mmask8 m = left >= 8 ? __mmask8(0xFF) : left <= 0 ? __mmask8(0) : __mmask8((1u << left) - 1);
      const int64_t at = std::min<int64_t>(j, width - 1);  // an address inside X even where m is 0
      const __m128i a = _mm_maskz_loadu_epi16(m, lo + at);
      const __m128i b = has_hi ? _mm_maskz_loadu_epi16(m, lo + x.ld + at) : _mm_setzero_si128();
      const __m256i ab = _mm256_inserti128_si256(_mm256_castsi128_si256(a), b, 1);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + p * W + j), _mm256_permutexvar_epi16(interleave, ab));
    }
  }
}

// C tile (rows x cols, at most kMr x kNr) = (accumulate ? C : 0) + sum over `pairs` of A pairs x B pairs.
TRI_AVX512_BF16 void micro_tile(int64_t pairs, const uint32_t* a, const uint32_t* b, float* c, int64_t ldc,
                                bool accumulate, int rows, int cols) {
  // C is touched only after the loop; ask for its lines now so their misses (C is larger
  // than the caches for training shapes) overlap the arithmetic instead of following it.
  for (int r = 0; r < rows; ++r) {
    for (int v = 0; v < kNv; ++v) _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc + 16 * v), _MM_HINT_T0);
  }
  __m512 acc[kMr][kNv];
#pragma GCC unroll 8
  for (int r = 0; r < kMr; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < kNv; ++v) acc[r][v] = _mm512_setzero_ps();
  }
  for (int64_t p = 0; p < pairs; ++p) {
    __m512bh bv[kNv];
#pragma GCC unroll 4
    for (int v = 0; v < kNv; ++v) bv[v] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(b + p * kNr + 16 * v));
#pragma GCC unroll 8
    for (int r = 0; r < kMr; ++r) {
      const __m512bh av = reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(a[p * kMr + r])));
#pragma GCC unroll 4
      for (int v = 0; v < kNv; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av, bv[v]);
    }
  }
  if (rows == kMr && cols == kNr) {
#pragma GCC unroll 8
    for (int r = 0; r < kMr; ++r) {
#pragma GCC unroll 4
      for (int v = 0; v < kNv; ++v) {
        float* cp = c + r * ldc + 16 * v;
        _mm512_storeu_ps(cp, accumulate ? _mm512_add_ps(acc[r][v], _mm512_loadu_ps(cp)) : acc[r][v]);
      }
    }
    return;
  }
  for (int r = 0; r < rows; ++r) {
    for (int v = 0; v < kNv && 16 * v < cols; ++v) {
      const int left = cols - 16 * v;
      const __mmask16 m = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
      float* cp = c + r * ldc + 16 * v;
      _mm512_mask_storeu_ps(cp, m, accumulate ? _mm512_add_ps(acc[r][v], _mm512_maskz_loadu_ps(m, cp)) : acc[r][v]);
    }
  }
}

// One thread's block of C (M x N), single-threaded, with that thread's pack buffers.
TRI_AVX512_BF16 void gemm_block(const Operand& a, const Operand& b, int64_t M, int64_t N, int64_t K, float beta,
                                float* C, int64_t ldc, Bf16PackBuffers& buf) {
  const int64_t kp_max = (kKc + 1) / 2;
  buf.a.resize(static_cast<size_t>((kMc + kMr - 1) / kMr * kMr * kp_max));
  buf.b.resize(static_cast<size_t>((kNc + kNr - 1) / kNr * kNr * kp_max));
  for (int64_t jc = 0; jc < N; jc += kNc) {
    const int64_t nc = std::min(kNc, N - jc);
    const int64_t npanels = (nc + kNr - 1) / kNr;
    for (int64_t pc = 0; pc < K; pc += kKc) {
      const int64_t kc = std::min(kKc, K - pc), pairs = (kc + 1) / 2;
      for (int64_t jp = 0; jp < npanels; ++jp) {
        pack_panel(buf.b.data() + jp * pairs * kNr, b, jc + jp * kNr, std::min<int64_t>(kNr, nc - jp * kNr), pc, kc,
                   kNr);
      }
      // Slices after the first add to what the earlier ones left in C.
      const bool accumulate = beta != 0.0f || pc > 0;
      for (int64_t ic = 0; ic < M; ic += kMc) {
        const int64_t mc = std::min(kMc, M - ic);
        const int64_t mpanels = (mc + kMr - 1) / kMr;
        for (int64_t ip = 0; ip < mpanels; ++ip) {
          pack_panel(buf.a.data() + ip * pairs * kMr, a, ic + ip * kMr, std::min<int64_t>(kMr, mc - ip * kMr), pc, kc,
                     kMr);
        }
        for (int64_t jp = 0; jp < npanels; ++jp) {
          const int cols = static_cast<int>(std::min<int64_t>(kNr, nc - jp * kNr));
          for (int64_t ip = 0; ip < mpanels; ++ip) {
            const int rows = static_cast<int>(std::min<int64_t>(kMr, mc - ip * kMr));
            micro_tile(pairs, buf.a.data() + ip * pairs * kMr, buf.b.data() + jp * pairs * kNr,
                       C + (ic + ip * kMr) * ldc + jc + jp * kNr, ldc, accumulate, rows, cols);
          }
        }
      }
    }
  }
}

}  // namespace

TRI_AVX512_BF16 void gemm_bf16_avx512(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const bf16_t* A,
                                      int64_t lda, const bf16_t* B, int64_t ldb, float beta, float* C, int64_t ldc,
                                      std::vector<Bf16PackBuffers>& buffers) {
  // op(A)[m][k] is A[m][k] (k along rows) or A[k][m]; op(B)[k][n] is B[k][n] or B[n][k] (k along rows).
  const Operand a{A, lda, !trans_a}, b{B, ldb, trans_b};
  int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  if (static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K) < kMinParallelMacs) threads = 1;
  // Split the larger dimension of C, in whole micro-tiles.
  const bool split_rows = M >= N;
  const int64_t dim = split_rows ? M : N, align = split_rows ? kMr : kNr;
  threads = static_cast<int>(std::min<int64_t>(threads, (dim + align - 1) / align));
  if (buffers.size() < static_cast<size_t>(threads)) buffers.resize(static_cast<size_t>(threads));
  if (threads <= 1) {
    gemm_block(a, b, M, N, K, beta, C, ldc, buffers[0]);
    return;
  }
  const int64_t per = (dim + threads - 1) / threads;
  const int64_t chunk = (per + align - 1) / align * align;
#pragma omp parallel for num_threads(threads) schedule(static, 1)
  for (int part = 0; part < threads; ++part) {
    const int64_t b0 = std::min(dim, part * chunk), b1 = std::min(dim, b0 + chunk);
    if (b0 >= b1) continue;
    if (split_rows) {
      const Operand ap{a.at(b0, 0), a.ld, a.k_contiguous};
      gemm_block(ap, b, b1 - b0, N, K, beta, C + b0 * ldc, ldc, buffers[static_cast<size_t>(part)]);
    } else {
      const Operand bp{b.at(b0, 0), b.ld, b.k_contiguous};
      gemm_block(a, bp, M, b1 - b0, K, beta, C + b0, ldc, buffers[static_cast<size_t>(part)]);
    }
  }
}

}  // namespace trident::kernels
