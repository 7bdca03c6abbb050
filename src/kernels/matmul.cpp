// Dense products through OpenBLAS sgemm: the Conv1D-layout linear layer (weight [in, out])
// and the tied LM head (table [V, C]), forward and both backward products. Transposes are
// expressed with sgemm's transpose flags, never materialised.
#include <cblas.h>

#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "kernels/kernels.h"

namespace trident::kernels {
namespace {

// dbias (OC) += column sums of dout (N, OC). Parallel over column blocks, each summing rows
// in order, so the result does not depend on the thread count.
void add_column_sums(float* dbias, const float* dout, int64_t N, int64_t OC) {
  constexpr int64_t kBlock = 64;  // 256 bytes: blocks never share a cache line
  const int64_t nblocks = (OC + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (int64_t blk = 0; blk < nblocks; ++blk) {
    const int64_t o0 = blk * kBlock;
    const int64_t o1 = std::min(OC, o0 + kBlock);
    float acc[kBlock] = {};
    for (int64_t n = 0; n < N; ++n) {
      const float* row = dout + n * OC;
#pragma omp simd
      for (int64_t o = o0; o < o1; ++o) acc[o - o0] += row[o];
    }
    for (int64_t o = o0; o < o1; ++o) dbias[o] += acc[o - o0];
  }
}

// C (M, Nc) = alpha * op(A) op(B) + beta * C with every degenerate size handled here, since
// BLAS rejects leading dimensions of 0 and an empty reduction must still apply beta.
void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t M, int64_t Nc, int64_t K,
          const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
          int64_t ldc) {
  if (M == 0 || Nc == 0) return;
  if (K == 0) {
    for (int64_t i = 0; i < M; ++i) {
      float* row = C + i * ldc;
      if (beta == 0.0f) {
        std::memset(row, 0, static_cast<size_t>(Nc) * sizeof(float));
      } else {
        for (int64_t j = 0; j < Nc; ++j) row[j] *= beta;
      }
    }
    return;
  }
  cblas_sgemm(CblasRowMajor, ta, tb, static_cast<blasint>(M), static_cast<blasint>(Nc),
              static_cast<blasint>(K), 1.0f, A, static_cast<blasint>(lda), B,
              static_cast<blasint>(ldb), beta, C, static_cast<blasint>(ldc));
}

}  // namespace

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias,
                    int64_t N, int64_t C, int64_t OC) {
  TRI_CHECK(N >= 0 && C >= 0 && OC >= 0, "matmul_forward: bad sizes N={} C={} OC={}", N, C, OC);
  float beta = 0.0f;
  if (bias != nullptr) {
    // Seed out with the bias and let sgemm accumulate (beta = 1): one pass over out fewer
    // than adding the bias afterwards.
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) std::memcpy(out + n * OC, bias, static_cast<size_t>(OC) * sizeof(float));
    beta = 1.0f;
  }
  gemm(CblasNoTrans, CblasNoTrans, N, OC, C, inp, C, weight, OC, beta, out, OC);
}

void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                     const float* inp, const float* weight, int64_t N, int64_t C, int64_t OC) {
  TRI_CHECK(N >= 0 && C >= 0 && OC >= 0, "matmul_backward: bad sizes N={} C={} OC={}", N, C, OC);
  // dinp (N, C) = dout (N, OC) @ weight (C, OC)^T
  if (dinp != nullptr) gemm(CblasNoTrans, CblasTrans, N, C, OC, dout, OC, weight, OC, 0.0f, dinp, C);
  // dweight (C, OC) += inp (N, C)^T @ dout (N, OC)
  if (dweight != nullptr) gemm(CblasTrans, CblasNoTrans, C, OC, N, inp, C, dout, OC, 1.0f, dweight, OC);
  if (dbias != nullptr) add_column_sums(dbias, dout, N, OC);
}

void matmul_forward_nt(float* out, const float* inp, const float* table, int64_t N, int64_t C,
                       int64_t V) {
  TRI_CHECK(N >= 0 && C >= 0 && V >= 0, "matmul_forward_nt: bad sizes N={} C={} V={}", N, C, V);
  // out (N, V) = inp (N, C) @ table (V, C)^T
  gemm(CblasNoTrans, CblasTrans, N, V, C, inp, C, table, C, 0.0f, out, V);
}

void matmul_backward_nt(float* dinp, float* dtable, const float* dout, const float* inp,
                        const float* table, int64_t N, int64_t C, int64_t V) {
  TRI_CHECK(N >= 0 && C >= 0 && V >= 0, "matmul_backward_nt: bad sizes N={} C={} V={}", N, C, V);
  // dinp (N, C) = dout (N, V) @ table (V, C)
  if (dinp != nullptr) gemm(CblasNoTrans, CblasNoTrans, N, C, V, dout, V, table, C, 0.0f, dinp, C);
  // dtable (V, C) += dout (N, V)^T @ inp (N, C)
  if (dtable != nullptr) gemm(CblasTrans, CblasNoTrans, V, C, N, dout, V, inp, C, 1.0f, dtable, C);
}

}  // namespace trident::kernels
