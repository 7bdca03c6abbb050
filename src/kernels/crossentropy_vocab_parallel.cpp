// Vocab-parallel cross-entropy passes (see vocab_parallel.h) and the row-range position
// embedding that sequence parallelism needs. Rows are independent: OpenMP over rows.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/check.h"
#include "kernels/vec_math.h"
#include "kernels/vocab_parallel.h"

namespace trident::kernels {

int64_t vocab_real_columns(int64_t V, int64_t vocab_begin, int64_t Vl) {
  return std::clamp<int64_t>(V - vocab_begin, 0, Vl);
}

void vocab_parallel_check_targets(const int32_t* targets, int64_t N, int64_t V) {
  for (int64_t n = 0; n < N; ++n) {
    TRI_CHECK(targets[n] < V, "crossentropy: target {} at row {} is outside the vocabulary of {}",
              targets[n], n, V);
  }
}

void vocab_parallel_row_max(float* rowmax, const float* logits, int64_t N, int64_t Vl,
                            int64_t real_cols) {
  TRI_CHECK(N >= 0 && real_cols >= 0 && real_cols <= Vl, "vocab_parallel_row_max: bad sizes N={} Vl={} real={}",
            N, Vl, real_cols);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* x = logits + n * Vl;
    float maxv = -INFINITY;
#pragma omp simd reduction(max : maxv)
    for (int64_t i = 0; i < real_cols; ++i) maxv = x[i] > maxv ? x[i] : maxv;
    rowmax[n] = maxv;
  }
}

void vocab_parallel_exp_sum(float* sums, float* logits, const float* rowmax,
                            const int32_t* targets, int64_t N, int64_t Vl, int64_t vocab_begin,
                            int64_t real_cols) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    float* x = logits + n * Vl;
    const float maxv = rowmax[n];
    const int64_t t = static_cast<int64_t>(targets[n]) - vocab_begin;
    sums[N + n] = (targets[n] >= 0 && t >= 0 && t < real_cols) ? x[t] - maxv : 0.0f;
    if (targets[n] < 0) {  // ignored position: no loss, no gradient
      sums[n] = 0.0f;
      continue;
    }
    // Summed in double, as the single-process kernel does (50k terms).
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < real_cols; ++i) {
      const float e = detail::exp_approx(x[i] - maxv);
      x[i] = e;
      sum += e;
    }
    sums[n] = static_cast<float>(sum);
  }
}

void vocab_parallel_loss_grad(float* losses, float* logits, const float* sums,
                              const int32_t* targets, int64_t N, int64_t Vl, int64_t vocab_begin,
                              int64_t real_cols, float dloss) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    float* x = logits + n * Vl;
    if (targets[n] < 0) {
      losses[n] = 0.0f;
      std::memset(x, 0, static_cast<size_t>(Vl) * sizeof(float));
      continue;
    }
    const double sum = static_cast<double>(sums[n]);
    losses[n] = static_cast<float>(std::log(sum) - static_cast<double>(sums[N + n]));
    const float scale = static_cast<float>(static_cast<double>(dloss) / sum);
#pragma omp simd
    for (int64_t i = 0; i < real_cols; ++i) x[i] *= scale;
    const int64_t t = static_cast<int64_t>(targets[n]) - vocab_begin;
    if (t >= 0 && t < real_cols) x[t] -= dloss;
    for (int64_t i = real_cols; i < Vl; ++i) x[i] = 0.0f;
  }
}

void position_embedding_forward_rows(float* out, const float* wpe, int64_t row_begin,
                                     int64_t rows, int64_t T, int64_t C) {
  TRI_CHECK(row_begin >= 0 && rows >= 0 && T > 0 && C >= 0,
            "position_embedding_forward_rows: bad sizes begin={} rows={} T={} C={}", row_begin,
            rows, T, C);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    float* o = out + r * C;
    const float* w = wpe + ((row_begin + r) % T) * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) o[c] += w[c];
  }
}

}  // namespace trident::kernels
