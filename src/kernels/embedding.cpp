// Token and position embeddings (forward and deterministic backward) and the residual add.
// Token ids outside [row_begin, row_begin + rows) belong to another tensor-parallel rank.
#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "kernels/kernels.h"
#include "kernels/profile.h"

namespace trident::kernels {
namespace {
// Column blocks of 16 floats = one 64-byte cache line, so threads owning different blocks
// never write the same line.
constexpr int64_t kColBlock = 16;
}  // namespace

void embedding_forward(float* out, const int32_t* ids, const float* table, int64_t N,
                       int64_t C, int64_t row_begin, int64_t rows) {
  detail::KernelTimer timer(KernelOp::kEmbedding, false, N, C);
  TRI_CHECK(N >= 0 && C >= 0 && rows >= 0, "embedding_forward: bad sizes N={} C={} rows={}", N, C, rows);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const int64_t r = static_cast<int64_t>(ids[n]) - row_begin;
    float* o = out + n * C;
    if (r >= 0 && r < rows) {
      std::memcpy(o, table + r * C, static_cast<size_t>(C) * sizeof(float));
    } else {
      std::memset(o, 0, static_cast<size_t>(C) * sizeof(float));
    }
  }
}

void embedding_backward(float* dtable, const float* dout, const int32_t* ids, int64_t N,
                        int64_t C, int64_t row_begin, int64_t rows) {
  detail::KernelTimer timer(KernelOp::kEmbedding, true, N, C);
  TRI_CHECK(N >= 0 && C >= 0 && rows >= 0, "embedding_backward: bad sizes N={} C={} rows={}", N, C, rows);
  // Parallel over channel blocks: every thread walks all N tokens in order and owns its
  // columns of every table row, so each element receives its contributions in token order
  // whatever the thread count (bitwise deterministic, no atomics).
  const int64_t nblocks = (C + kColBlock - 1) / kColBlock;
#pragma omp parallel for schedule(static)
  for (int64_t blk = 0; blk < nblocks; ++blk) {
    const int64_t c0 = blk * kColBlock;
    const int64_t c1 = std::min(C, c0 + kColBlock);
    for (int64_t n = 0; n < N; ++n) {
      const int64_t r = static_cast<int64_t>(ids[n]) - row_begin;
      if (r < 0 || r >= rows) continue;
      float* d = dtable + r * C;
      const float* g = dout + n * C;
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) d[c] += g[c];
    }
  }
}

void position_embedding_forward(float* out, const float* wpe, int64_t B, int64_t T, int64_t C) {
  detail::KernelTimer timer(KernelOp::kEmbedding, false, B * T, C);
  TRI_CHECK(B >= 0 && T >= 0 && C >= 0, "position_embedding_forward: bad sizes B={} T={} C={}", B, T, C);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      float* o = out + (b * T + t) * C;
      const float* w = wpe + t * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] += w[c];
    }
  }
}

void position_embedding_backward(float* dwpe, const float* dout, int64_t B, int64_t T,
                                 int64_t C) {
  detail::KernelTimer timer(KernelOp::kEmbedding, true, B * T, C);
  TRI_CHECK(B >= 0 && T >= 0 && C >= 0, "position_embedding_backward: bad sizes B={} T={} C={}", B, T, C);
  // Parallel over positions; the batch is summed in order b = 0..B-1 (deterministic).
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    float* d = dwpe + t * C;
    for (int64_t b = 0; b < B; ++b) {
      const float* g = dout + (b * T + t) * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) d[c] += g[c];
    }
  }
}

void residual_forward(float* out, const float* a, const float* b, int64_t n) {
  detail::KernelTimer timer(KernelOp::kResidual, false, n);
  TRI_CHECK(n >= 0, "residual_forward: bad size n={}", n);
  // out may alias a or b: element i is read before it is written, by the same iteration.
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

}  // namespace trident::kernels
