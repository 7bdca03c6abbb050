// Mixture-of-experts host math (see moe_combine.h). The formulas and their summation orders
// are those nn/moe_mlp.cpp used before they moved here; only the token/expert loops run in
// parallel, each iteration writing its own outputs.
#include "kernels/moe_combine.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace trident::kernels {

void moe_combine_forward(float* out, const float* y, const int32_t* row_of, const float* weights, int64_t N,
                         int64_t K, int64_t C) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    float* o = out + n * C;
    std::fill(o, o + C, 0.0f);
    for (int64_t j = 0; j < K; ++j) {
      if (row_of[n * K + j] < 0) continue;  // dropped: contributes zero
      const float w = weights[n * K + j];
      const float* yr = y + static_cast<int64_t>(row_of[n * K + j]) * C;
      for (int64_t c = 0; c < C; ++c) o[c] += w * yr[c];
    }
  }
}

void moe_combine_backward(float* dweights, float* dy, const float* dout, const float* y, const int32_t* row_of,
                          const float* weights, int64_t N, int64_t K, int64_t C) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t j = 0; j < K; ++j) {
      if (row_of[n * K + j] < 0) {  // dropped: no output, so no weight gradient
        dweights[n * K + j] = 0.0f;
        continue;
      }
      const int64_t row = row_of[n * K + j];
      const float* yr = y + row * C;
      double s = 0.0;
      for (int64_t c = 0; c < C; ++c) s += static_cast<double>(dout[n * C + c]) * yr[c];
      dweights[n * K + j] = static_cast<float>(s);
      float* d = dy + row * C;
      const float w = weights[n * K + j];
      for (int64_t c = 0; c < C; ++c) d[c] = w * dout[n * C + c];
    }
  }
}

void moe_scatter_add_rows(float* dx, const float* drows, const int32_t* token_of, int64_t R, int64_t N, int64_t C) {
  std::memset(dx, 0, static_cast<std::size_t>(N * C) * sizeof(float));
  for (int64_t r = 0; r < R; ++r) {  // in row order: a token's rows are summed in expert order
    float* d = dx + static_cast<int64_t>(token_of[r]) * C;
    const float* g = drows + r * C;
    for (int64_t c = 0; c < C; ++c) d[c] += g[c];
  }
}

void moe_router_logit_grad(double* dlogit, const float* probs, const int32_t* experts, const float* dweights,
                           const float* weights, const int32_t* seq_counts, const double* lse, int64_t N, int64_t T,
                           int64_t E, int64_t K, RouterRule rule, double aux_coef, double z_coef) {
#pragma omp parallel
  {
    std::vector<double> dp(static_cast<std::size_t>(E)), a(static_cast<std::size_t>(E));  // a: sigmoid's aux terms
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const float* p = probs + n * E;
      const int32_t* sel = experts + n * K;
      std::fill(dp.begin(), dp.end(), 0.0);
      if (rule.normalized) {  // w_j = c p_j / S: dp_j = (c dw_j - sum_i dw_i w_i) / S
        double S = 0.0, dot = 0.0;
        for (int64_t j = 0; j < K; ++j) S += p[sel[j]];
        for (int64_t j = 0; j < K; ++j) dot += static_cast<double>(dweights[n * K + j]) * weights[n * K + j];
        for (int64_t j = 0; j < K; ++j) dp[sel[j]] = (rule.scale * dweights[n * K + j] - dot) / S;
      } else {
        for (int64_t j = 0; j < K; ++j) dp[sel[j]] = rule.scale * dweights[n * K + j];
      }
      const int64_t b = n / T;
      if (rule.sigmoid) {
        // P_e reads q_e = p_e / Q (Q = sum p): d/dp_i of sum_e a_e q_e = (a_i - sum_e a_e q_e) / Q.
        double Q = 0.0, aq = 0.0;
        for (int64_t e = 0; e < E; ++e) Q += p[e];
        for (int64_t e = 0; e < E; ++e) {
          const double f = static_cast<double>(E) / static_cast<double>(K * T) * seq_counts[b * E + e];
          a[e] = aux_coef * f / static_cast<double>(T);
          aq += a[e] * p[e];
        }
        aq /= Q;
        for (int64_t e = 0; e < E; ++e) {
          dp[e] += (a[e] - aq) / Q;
          dlogit[n * E + e] = dp[e] * p[e] * (1.0 - static_cast<double>(p[e]));  // sigmoid' = s (1 - s)
        }
        continue;
      }
      for (int64_t e = 0; e < E; ++e) {
        const double f = static_cast<double>(E) / static_cast<double>(K * T) * seq_counts[b * E + e];
        dp[e] += aux_coef * f / static_cast<double>(T);
      }
      double dot = 0.0;
      for (int64_t e = 0; e < E; ++e) dot += p[e] * dp[e];
      // + the z-loss's: d (w lse^2) / d logit_e = 2 w lse p_e.
      const double dz = 2.0 * z_coef * lse[n];
      for (int64_t e = 0; e < E; ++e) dlogit[n * E + e] = p[e] * (dp[e] - dot + dz);
    }
  }
}

void moe_router_backward_products(float* dwr, float* dx, const double* dlogit, const float* x, const float* wr,
                                  int64_t N, int64_t E, int64_t C) {
  const int64_t rows = dwr != nullptr ? E : 0;  // a frozen router (a LoRA base): no dwr
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t e = 0; e < rows; ++e) {
    for (int64_t c = 0; c < C; ++c) {
      double s = 0.0;
      for (int64_t n = 0; n < N; ++n) s += dlogit[n * E + e] * x[n * C + c];
      dwr[e * C + c] += static_cast<float>(s);
    }
  }
  if (dx == nullptr) return;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t c = 0; c < C; ++c) {
      double s = 0.0;
      for (int64_t e = 0; e < E; ++e) s += dlogit[n * E + e] * wr[e * C + c];
      dx[n * C + c] += static_cast<float>(s);
    }
  }
}

double moe_sequence_balance(int32_t* seq_counts, const int32_t* experts, const float* probs, int64_t B, int64_t T,
                            int64_t E, int64_t K, bool normalize) {
  std::fill(seq_counts, seq_counts + B * E, 0);
  double aux_sum = 0.0;
  std::vector<double> inv(static_cast<std::size_t>(T), 1.0);  // 1 / sum_e p_e of each token (normalize)
  for (int64_t b = 0; b < B; ++b) {  // in sequence order: the sum is the same at any thread count
    int32_t* cnt = seq_counts + b * E;
    for (int64_t i = b * T * K; i < (b + 1) * T * K; ++i) ++cnt[experts[i]];
    if (normalize) {
      for (int64_t t = 0; t < T; ++t) {
        double Q = 0.0;
        for (int64_t e = 0; e < E; ++e) Q += probs[(b * T + t) * E + e];
        inv[t] = 1.0 / Q;
      }
    }
    for (int64_t e = 0; e < E; ++e) {
      double P = 0.0;
      for (int64_t t = 0; t < T; ++t) P += normalize ? probs[(b * T + t) * E + e] * inv[t] : probs[(b * T + t) * E + e];
      const double f = static_cast<double>(E) / static_cast<double>(K * T) * cnt[e];
      aux_sum += f * P / static_cast<double>(T);
    }
  }
  return aux_sum;
}

}  // namespace trident::kernels
