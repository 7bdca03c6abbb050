// Dense products through OpenBLAS sgemm: the Conv1D-layout linear layer (weight [in, out])
// and the tied LM head (table [V, C]), forward and both backward products. Transposes are
// expressed with sgemm's transpose flags, never materialised.
#include <cblas.h>
#include <dnnl.h>
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "kernels/kernels.h"
#include "kernels/profile.h"

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

void sgemm1(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t M, int64_t Nc, int64_t K,
            const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
            int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, static_cast<blasint>(M), static_cast<blasint>(Nc),
              static_cast<blasint>(K), 1.0f, A, static_cast<blasint>(lda), B,
              static_cast<blasint>(ldb), beta, C, static_cast<blasint>(ldc));
}

// Products smaller than this (multiply-adds) are not worth waking a second thread for.
constexpr double kMinParallelMacs = 1 << 20;
// Per-thread blocks of C start at multiples of this many rows / columns (sgemm kernel widths).
constexpr int64_t kSplitAlign = 32;

// C (M, Nc) = op(A) op(B) + beta * C with every degenerate size handled here, since BLAS
// rejects leading dimensions of 0 and an empty reduction must still apply beta.
//
// Threading: a product worth more than one thread goes to oneDNN's sgemm (row-major, the same
// arguments), which threads it over the process's OpenMP pool and shares each packed panel
// between the threads. Cutting C into one single-threaded OpenBLAS sgemm per thread (the
// fallback below, and the path where oneDNN refuses a call) makes every thread pack the
// whole shared operand: on the tied head's dx product (K = 50304) that duplicated packing was
// most of the 10% by which the step's matmuls trailed the BLAS (docs/performance.md).
// OpenBLAS's own pthread pool stays at one thread: its workers busy-wait (sched_yield) for
// ~0.1 s after every call, and on a machine with as many cores as threads they then steal
// the cores the OpenMP kernels between two matmuls need (a residual add measured 50x slower
// than its memory traffic). oneDNN uses the same OpenMP pool, so threads hand over without
// contention. oneDNN partitions a product by its shape and the thread count only, so results
// are deterministic for a given thread count (not across thread counts).
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
  const bool split_rows = M >= Nc;
  const int64_t dim = split_rows ? M : Nc;
  int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  if (static_cast<double>(M) * static_cast<double>(Nc) * static_cast<double>(K) < kMinParallelMacs) threads = 1;
  threads = static_cast<int>(std::min<int64_t>(threads, (dim + kSplitAlign - 1) / kSplitAlign));
  if (openblas_get_num_threads() != 1) openblas_set_num_threads(1);
  if (threads > 1 && dnnl_sgemm(ta == CblasNoTrans ? 'N' : 'T', tb == CblasNoTrans ? 'N' : 'T', M, Nc, K,
                                1.0f, A, lda, B, ldb, beta, C, ldc) == dnnl_success) {
    return;
  }
  if (threads <= 1) {
    sgemm1(ta, tb, M, Nc, K, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  const int64_t per = (dim + threads - 1) / threads;
  const int64_t chunk = (per + kSplitAlign - 1) / kSplitAlign * kSplitAlign;
#pragma omp parallel for num_threads(threads) schedule(static, 1)
  for (int part = 0; part < threads; ++part) {
    const int64_t b0 = std::min(dim, part * chunk);
    const int64_t b1 = std::min(dim, b0 + chunk);
    if (b0 >= b1) continue;
    if (split_rows) {  // rows b0..b1 of op(A) and C
      const float* a = ta == CblasNoTrans ? A + b0 * lda : A + b0;
      sgemm1(ta, tb, b1 - b0, Nc, K, a, lda, B, ldb, beta, C + b0 * ldc, ldc);
    } else {           // columns b0..b1 of op(B) and C
      const float* b = tb == CblasNoTrans ? B + b0 : B + b0 * ldb;
      sgemm1(ta, tb, M, b1 - b0, K, A, lda, b, ldb, beta, C + b0, ldc);
    }
  }
}

}  // namespace

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias,
                    int64_t N, int64_t C, int64_t OC) {
  detail::KernelTimer timer(KernelOp::kMatmul, false, N, C, OC);
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
  detail::KernelTimer timer(KernelOp::kMatmul, true, N, C, OC);
  TRI_CHECK(N >= 0 && C >= 0 && OC >= 0, "matmul_backward: bad sizes N={} C={} OC={}", N, C, OC);
  // dinp (N, C) = dout (N, OC) @ weight (C, OC)^T
  if (dinp != nullptr) gemm(CblasNoTrans, CblasTrans, N, C, OC, dout, OC, weight, OC, 0.0f, dinp, C);
  // dweight (C, OC) += inp (N, C)^T @ dout (N, OC)
  if (dweight != nullptr) gemm(CblasTrans, CblasNoTrans, C, OC, N, inp, C, dout, OC, 1.0f, dweight, OC);
  if (dbias != nullptr) add_column_sums(dbias, dout, N, OC);
}

void matmul_forward_nt(float* out, const float* inp, const float* table, int64_t N, int64_t C,
                       int64_t V) {
  detail::KernelTimer timer(KernelOp::kMatmulNt, false, N, C, V);
  TRI_CHECK(N >= 0 && C >= 0 && V >= 0, "matmul_forward_nt: bad sizes N={} C={} V={}", N, C, V);
  // out (N, V) = inp (N, C) @ table (V, C)^T
  gemm(CblasNoTrans, CblasTrans, N, V, C, inp, C, table, C, 0.0f, out, V);
}

void matmul_backward_nt(float* dinp, float* dtable, const float* dout, const float* inp,
                        const float* table, int64_t N, int64_t C, int64_t V) {
  detail::KernelTimer timer(KernelOp::kMatmulNt, true, N, C, V);
  TRI_CHECK(N >= 0 && C >= 0 && V >= 0, "matmul_backward_nt: bad sizes N={} C={} V={}", N, C, V);
  // dinp (N, C) = dout (N, V) @ table (V, C)
  if (dinp != nullptr) gemm(CblasNoTrans, CblasNoTrans, N, C, V, dout, V, table, C, 0.0f, dinp, C);
  // dtable (V, C) += dout (N, V)^T @ inp (N, C)
  if (dtable != nullptr) gemm(CblasTrans, CblasNoTrans, V, C, N, dout, V, inp, C, 1.0f, dtable, C);
}

}  // namespace trident::kernels
