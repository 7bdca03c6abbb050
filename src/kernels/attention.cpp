// Causal multi-head self-attention, forward and backward. Every product goes through sgemm
// on strided views of qkv (lda = 3C, no copies), restricted to the lower-triangular blocks
// the causal mask leaves; heads run in parallel with single-threaded sgemm inside.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/check.h"
#include "kernels/kernels.h"
#include "kernels/profile.h"
#include "kernels/vec_math.h"

namespace trident::kernels {
namespace {

// Query rows per block. Row block [i0, i1) only needs keys [0, i1), so the products cost
// ~T^2/2 + T*kRowBlock/2 instead of T^2 multiply-adds per head dimension.
constexpr int64_t kRowBlock = 64;

void sgemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t M, int64_t N, int64_t K, float alpha,
           const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
           int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, static_cast<blasint>(M), static_cast<blasint>(N),
              static_cast<blasint>(K), alpha, A, static_cast<blasint>(lda), B,
              static_cast<blasint>(ldb), beta, C, static_cast<blasint>(ldc));
}

// Runs f(i) for i in [0, count). With enough independent heads for every thread, the heads
// are spread over OpenMP threads with single-threaded sgemm inside; otherwise they run in
// order. (OpenBLAS is normally at one thread already: kernels::set_num_threads and
// matmul.cpp keep it there; the set/restore below covers callers that changed it.)
template <class F>
void for_each_head(int64_t count, F&& f) {
  const int threads = omp_get_max_threads();
  if (threads > 1 && count >= threads) {
    const int blas_threads = openblas_get_num_threads();
    openblas_set_num_threads(1);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < count; ++i) f(i);
    openblas_set_num_threads(blas_threads);
  } else {
    for (int64_t i = 0; i < count; ++i) f(i);
  }
}

// Per-thread (T, T) scratch for the backward's datt / dpreatt, grown on demand and kept
// for the thread's lifetime (the documented exception to "kernels never allocate").
float* thread_scratch(int64_t count) {
  thread_local std::vector<float> scratch;
  if (scratch.size() < static_cast<size_t>(count)) scratch.resize(static_cast<size_t>(count));
  return scratch.data();
}

// Where one (batch, head) pair bh = b * NH + h lives: its q, k, v are (T, HS) views of
// qkv (row stride 3C, at columns h*HS, C + h*HS, 2C + h*HS), its output/gradient rows a
// (T, HS) view of a (B, T, C) tensor, its attention matrix the bh-th (T, T) block.
struct HeadLayout {
  int64_t T, C, NH, HS, C3;
  float scale;  // 1 / sqrt(HS)
  HeadLayout(const char* op, int64_t B, int64_t T_, int64_t C_, int64_t NH_)
      : T(T_), C(C_), NH(NH_), HS(NH_ > 0 ? C_ / NH_ : 0), C3(3 * C_) {
    TRI_CHECK(B >= 0 && T >= 0 && NH > 0 && C > 0 && C % NH == 0,
              "{}: bad sizes B={} T={} C={} NH={} (C must be a multiple of NH)", op, B, T, C, NH);
    scale = 1.0f / std::sqrt(static_cast<float>(HS));
  }
  int64_t q_offset(int64_t bh) const { return (bh / NH) * T * C3 + (bh % NH) * HS; }
  int64_t row_offset(int64_t bh) const { return (bh / NH) * T * C + (bh % NH) * HS; }
};

}  // namespace

void attention_forward(float* out, float* att, const float* qkv, int64_t B, int64_t T,
                       int64_t C, int64_t NH) {
  detail::KernelTimer timer(KernelOp::kAttention, false, B * T, C, NH);
  const HeadLayout L("attention_forward", B, T, C, NH);
  const int64_t HS = L.HS, C3 = L.C3;
  const float scale = L.scale;
  for_each_head(B * NH, [&](int64_t bh) {
    const float* q = qkv + L.q_offset(bh);
    const float* k = q + C;
    const float* v = q + 2 * C;
    float* a = att + bh * T * T;
    float* o = out + L.row_offset(bh);
    for (int64_t i0 = 0; i0 < T; i0 += kRowBlock) {
      const int64_t i1 = std::min(T, i0 + kRowBlock);
      // preatt[i0:i1, 0:i1] = scale * q[i0:i1] @ k[0:i1]^T
      sgemm(CblasNoTrans, CblasTrans, i1 - i0, i1, HS, scale, q + i0 * C3, C3, k, C3, 0.0f,
            a + i0 * T, T);
      for (int64_t t = i0; t < i1; ++t) {
        float* row = a + t * T;
        float maxv = -INFINITY;
        for (int64_t j = 0; j <= t; ++j) maxv = std::max(maxv, row[j]);
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j <= t; ++j) {
          const float e = detail::exp_approx(row[j] - maxv);
          row[j] = e;
          sum += e;
        }
        const float inv = 1.0f / sum;
#pragma omp simd
        for (int64_t j = 0; j <= t; ++j) row[j] *= inv;
        std::memset(row + t + 1, 0, static_cast<size_t>(T - t - 1) * sizeof(float));
      }
      // out[i0:i1] = att[i0:i1, 0:i1] @ v[0:i1]
      sgemm(CblasNoTrans, CblasNoTrans, i1 - i0, HS, i1, 1.0f, a + i0 * T, T, v, C3, 0.0f,
            o + i0 * C, C);
    }
  });
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* att,
                        int64_t B, int64_t T, int64_t C, int64_t NH) {
  detail::KernelTimer timer(KernelOp::kAttention, true, B * T, C, NH);
  const HeadLayout L("attention_backward", B, T, C, NH);
  const int64_t HS = L.HS, C3 = L.C3;
  const float scale = L.scale;
  for_each_head(B * NH, [&](int64_t bh) {
    const float* q = qkv + L.q_offset(bh);
    const float* k = q + C;
    const float* v = q + 2 * C;
    const float* a = att + bh * T * T;
    const float* dO = dout + L.row_offset(bh);
    float* dq = dqkv + L.q_offset(bh);
    float* dk = dq + C;
    float* dv = dq + 2 * C;
    float* d = thread_scratch(T * T);  // datt, then dpreatt in place
    for (int64_t i0 = 0; i0 < T; i0 += kRowBlock) {
      const int64_t i1 = std::min(T, i0 + kRowBlock);
      // datt[i0:i1, 0:i1] = dout[i0:i1] @ v[0:i1]^T
      sgemm(CblasNoTrans, CblasTrans, i1 - i0, i1, HS, 1.0f, dO + i0 * C, C, v, C3, 0.0f,
            d + i0 * T, T);
      // Softmax backward, with the 1/sqrt(HS) of the forward folded in:
      // dpreatt[t, j] = scale * att[t, j] * (datt[t, j] - sum_j' att[t, j'] datt[t, j']).
      // Entries right of the diagonal inside the block are zeroed: the dk product below
      // reads them.
      for (int64_t t = i0; t < i1; ++t) {
        const float* arow = a + t * T;
        float* drow = d + t * T;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int64_t j = 0; j <= t; ++j) dot += arow[j] * drow[j];
#pragma omp simd
        for (int64_t j = 0; j <= t; ++j) drow[j] = scale * arow[j] * (drow[j] - dot);
        std::memset(drow + t + 1, 0, static_cast<size_t>(i1 - t - 1) * sizeof(float));
      }
      // dq[i0:i1] = dpreatt[i0:i1, 0:i1] @ k[0:i1]
      sgemm(CblasNoTrans, CblasNoTrans, i1 - i0, HS, i1, 1.0f, d + i0 * T, T, k, C3, 0.0f,
            dq + i0 * C3, C3);
    }
    // Key/value rows j0..j1 receive from query rows j0..T-1 only (causality).
    for (int64_t j0 = 0; j0 < T; j0 += kRowBlock) {
      const int64_t j1 = std::min(T, j0 + kRowBlock);
      // dk[j0:j1] = dpreatt[j0:T, j0:j1]^T @ q[j0:T]
      sgemm(CblasTrans, CblasNoTrans, j1 - j0, HS, T - j0, 1.0f, d + j0 * T + j0, T,
            q + j0 * C3, C3, 0.0f, dk + j0 * C3, C3);
      // dv[j0:j1] = att[j0:T, j0:j1]^T @ dout[j0:T]
      sgemm(CblasTrans, CblasNoTrans, j1 - j0, HS, T - j0, 1.0f, a + j0 * T + j0, T,
            dO + j0 * C, C, 0.0f, dv + j0 * C3, C3);
    }
  });
}

}  // namespace trident::kernels
