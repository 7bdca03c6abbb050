// Causal self-attention, multi-head and grouped-query, forward and backward. Every product
// goes through sgemm on strided views of qkv (no copies), restricted to the lower-triangular
// blocks the causal mask leaves; heads run in parallel with single-threaded sgemm inside.
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

// Where one (batch, query head) pair bh = b * NH + h lives. qkv rows are [q | k | v] with
// NH query heads and NKV key/value heads (NKV divides NH; query head h reads key/value head
// h / (NH / NKV), as Hugging Face's repeat_kv: contiguous groups). q, k, v are (T, HS) views
// with row stride RW = (NH + 2 NKV) HS; the output/gradient rows a (T, HS) view of a
// (B, T, NH HS) tensor; the attention matrix the bh-th (T, T) block.
struct HeadLayout {
  int64_t T, NH, NKV, HS, QW, KVW, RW, group;
  float scale;  // 1 / sqrt(HS)
  HeadLayout(const char* op, int64_t B, int64_t T_, int64_t NH_, int64_t NKV_, int64_t HS_)
      : T(T_), NH(NH_), NKV(NKV_), HS(HS_), QW(NH_ * HS_), KVW(NKV_ * HS_), RW((NH_ + 2 * NKV_) * HS_),
        group(NKV_ > 0 ? NH_ / NKV_ : 0) {
    TRI_CHECK(B >= 0 && T >= 0 && NH > 0 && NKV > 0 && HS > 0 && NH % NKV == 0,
              "{}: bad sizes B={} T={} NH={} NKV={} HS={} (NKV must divide NH)", op, B, T, NH, NKV, HS);
    scale = 1.0f / std::sqrt(static_cast<float>(HS));
  }
  int64_t q_offset(int64_t bh) const { return (bh / NH) * T * RW + (bh % NH) * HS; }
  int64_t k_offset(int64_t bh) const { return (bh / NH) * T * RW + QW + (bh % NH) / group * HS; }
  int64_t v_offset(int64_t bh) const { return k_offset(bh) + KVW; }
  int64_t row_offset(int64_t bh) const { return (bh / NH) * T * QW + (bh % NH) * HS; }
};

}  // namespace

void attention_gqa_forward(float* out, float* att, const float* qkv, int64_t B, int64_t T, int64_t NH,
                           int64_t NKV, int64_t HS) {
  detail::KernelTimer timer(KernelOp::kAttention, false, B * T, NH * HS, NH);
  const HeadLayout L("attention_forward", B, T, NH, NKV, HS);
  const int64_t RW = L.RW, QW = L.QW;
  const float scale = L.scale;
  for_each_head(B * NH, [&](int64_t bh) {
    const float* q = qkv + L.q_offset(bh);
    const float* k = qkv + L.k_offset(bh);
    const float* v = qkv + L.v_offset(bh);
    float* a = att + bh * T * T;
    float* o = out + L.row_offset(bh);
    for (int64_t i0 = 0; i0 < T; i0 += kRowBlock) {
      const int64_t i1 = std::min(T, i0 + kRowBlock);
      // preatt[i0:i1, 0:i1] = scale * q[i0:i1] @ k[0:i1]^T
      sgemm(CblasNoTrans, CblasTrans, i1 - i0, i1, HS, scale, q + i0 * RW, RW, k, RW, 0.0f,
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
      sgemm(CblasNoTrans, CblasNoTrans, i1 - i0, HS, i1, 1.0f, a + i0 * T, T, v, RW, 0.0f,
            o + i0 * QW, QW);
    }
  });
}

void attention_gqa_backward(float* dqkv, const float* dout, const float* qkv, const float* att, int64_t B,
                            int64_t T, int64_t NH, int64_t NKV, int64_t HS) {
  detail::KernelTimer timer(KernelOp::kAttention, true, B * T, NH * HS, NH);
  const HeadLayout L("attention_backward", B, T, NH, NKV, HS);
  const int64_t RW = L.RW, QW = L.QW;
  const float scale = L.scale;
  // One task per (batch, key/value head): the query heads of its group run in order and add
  // their shares into the shared dk, dv (beta 1 after the first), so no two threads write
  // the same rows.
  for_each_head(B * NKV, [&](int64_t bkv) {
    for (int64_t g = 0; g < L.group; ++g) {
      const int64_t bh = (bkv / NKV) * NH + (bkv % NKV) * L.group + g;
      const float beta_kv = g == 0 ? 0.0f : 1.0f;
      const float* q = qkv + L.q_offset(bh);
      const float* k = qkv + L.k_offset(bh);
      const float* v = qkv + L.v_offset(bh);
      const float* a = att + bh * T * T;
      const float* dO = dout + L.row_offset(bh);
      float* dq = dqkv + L.q_offset(bh);
      float* dk = dqkv + L.k_offset(bh);
      float* dv = dqkv + L.v_offset(bh);
      float* d = thread_scratch(T * T);  // datt, then dpreatt in place
      for (int64_t i0 = 0; i0 < T; i0 += kRowBlock) {
        const int64_t i1 = std::min(T, i0 + kRowBlock);
        // datt[i0:i1, 0:i1] = dout[i0:i1] @ v[0:i1]^T
        sgemm(CblasNoTrans, CblasTrans, i1 - i0, i1, HS, 1.0f, dO + i0 * QW, QW, v, RW, 0.0f,
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
        sgemm(CblasNoTrans, CblasNoTrans, i1 - i0, HS, i1, 1.0f, d + i0 * T, T, k, RW, 0.0f,
              dq + i0 * RW, RW);
      }
      // Key/value rows j0..j1 receive from query rows j0..T-1 only (causality).
      for (int64_t j0 = 0; j0 < T; j0 += kRowBlock) {
        const int64_t j1 = std::min(T, j0 + kRowBlock);
        // dk[j0:j1] (+)= dpreatt[j0:T, j0:j1]^T @ q[j0:T]
        sgemm(CblasTrans, CblasNoTrans, j1 - j0, HS, T - j0, 1.0f, d + j0 * T + j0, T,
              q + j0 * RW, RW, beta_kv, dk + j0 * RW, RW);
        // dv[j0:j1] (+)= att[j0:T, j0:j1]^T @ dout[j0:T]
        sgemm(CblasTrans, CblasNoTrans, j1 - j0, HS, T - j0, 1.0f, a + j0 * T + j0, T,
              dO + j0 * QW, QW, beta_kv, dv + j0 * RW, RW);
      }
    }
  });
}

void attention_forward(float* out, float* att, const float* qkv, int64_t B, int64_t T,
                       int64_t C, int64_t NH) {
  TRI_CHECK(NH > 0 && C > 0 && C % NH == 0, "attention_forward: C={} must be a multiple of NH={}", C, NH);
  attention_gqa_forward(out, att, qkv, B, T, NH, NH, C / NH);
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* att,
                        int64_t B, int64_t T, int64_t C, int64_t NH) {
  TRI_CHECK(NH > 0 && C > 0 && C % NH == 0, "attention_backward: C={} must be a multiple of NH={}", C, NH);
  attention_gqa_backward(dqkv, dout, qkv, att, B, T, NH, NH, C / NH);
}

}  // namespace trident::kernels
