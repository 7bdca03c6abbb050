// The MoE host kernels: the combine and its backward against a plain fp64 reference (with a
// dropped pair), and every kernel bitwise the same at 1 and 3 threads.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/moe_combine.h"

namespace trident::kernels {
namespace {

struct Routed {
  int64_t B = 2, T = 5, N = 10, E = 4, K = 2, C = 7;
  std::vector<int32_t> experts, row_of, token_of, seq_counts;
  std::vector<float> probs, weights, y, dout, x, wr, dweights;
  std::vector<double> lse;
  int64_t R = 0;
};

Routed make() {
  Routed r;
  std::mt19937 gen(3);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  auto fill = [&](std::vector<float>& v, int64_t n) {
    v.resize(static_cast<std::size_t>(n));
    for (float& f : v) f = u(gen);
  };
  r.experts.resize(static_cast<std::size_t>(r.N * r.K));
  r.row_of.assign(r.experts.size(), -1);
  r.probs.resize(static_cast<std::size_t>(r.N * r.E));
  for (int64_t n = 0; n < r.N; ++n) {
    r.experts[n * r.K] = static_cast<int32_t>(n % 2);
    r.experts[n * r.K + 1] = static_cast<int32_t>(2 + n % 2);
    double z = 0;
    for (int64_t e = 0; e < r.E; ++e) z += r.probs[n * r.E + e] = 0.1f + std::fabs(u(gen));
    for (int64_t e = 0; e < r.E; ++e) r.probs[n * r.E + e] = static_cast<float>(r.probs[n * r.E + e] / z);
  }
  for (int64_t i = 0; i < r.N * r.K; ++i) {
    if (i == 5) continue;  // one dropped pair
    r.row_of[i] = static_cast<int32_t>(r.R);
    r.token_of.push_back(static_cast<int32_t>(i / r.K));
    ++r.R;
  }
  fill(r.weights, r.N * r.K);
  fill(r.y, r.R * r.C);
  fill(r.dout, r.N * r.C);
  fill(r.x, r.N * r.C);
  fill(r.wr, r.E * r.C);
  fill(r.dweights, r.N * r.K);
  r.lse.resize(static_cast<std::size_t>(r.N));
  for (double& l : r.lse) l = u(gen);
  r.seq_counts.resize(static_cast<std::size_t>(r.B * r.E));
  return r;
}

struct Outputs {
  std::vector<float> out, dw, dy, dx, dwr, dxr;
  std::vector<double> dlogit;
  std::vector<int32_t> counts;
  double aux = 0;
};

Outputs run_all(Routed& r) {
  Outputs o;
  o.out.resize(static_cast<std::size_t>(r.N * r.C));
  moe_combine_forward(o.out.data(), r.y.data(), r.row_of.data(), r.weights.data(), r.N, r.K, r.C);
  o.dw.resize(static_cast<std::size_t>(r.N * r.K));
  o.dy.assign(static_cast<std::size_t>(r.R * r.C), 0.0f);
  moe_combine_backward(o.dw.data(), o.dy.data(), r.dout.data(), r.y.data(), r.row_of.data(), r.weights.data(), r.N,
                       r.K, r.C);
  o.dx.resize(static_cast<std::size_t>(r.N * r.C));
  moe_scatter_add_rows(o.dx.data(), r.y.data(), r.token_of.data(), r.R, r.N, r.C);
  o.counts.resize(static_cast<std::size_t>(r.B * r.E));
  o.aux = moe_sequence_balance(o.counts.data(), r.experts.data(), r.probs.data(), r.B, r.T, r.E, r.K);
  o.dlogit.resize(static_cast<std::size_t>(r.N * r.E));
  moe_router_logit_grad(o.dlogit.data(), r.probs.data(), r.experts.data(), r.dweights.data(), r.weights.data(),
                        o.counts.data(), r.lse.data(), r.N, r.T, r.E, r.K, RouterRule{}, 0.5, 0.1);
  o.dwr.assign(static_cast<std::size_t>(r.E * r.C), 0.25f);
  o.dxr.assign(static_cast<std::size_t>(r.N * r.C), 0.5f);
  moe_router_backward_products(o.dwr.data(), o.dxr.data(), o.dlogit.data(), r.x.data(), r.wr.data(), r.N, r.E, r.C);
  return o;
}

TEST(KernelsMoeCombine, CombineAndItsBackwardMatchFp64Reference) {
  Routed r = make();
  const Outputs o = run_all(r);
  // fp32 sums of K = 2 products: |error| <= 2 eps |w y| <= 2.4e-7 for values in [-1, 1].
  for (int64_t n = 0; n < r.N; ++n) {
    for (int64_t c = 0; c < r.C; ++c) {
      double ref = 0;
      for (int64_t j = 0; j < r.K; ++j) {
        const int32_t row = r.row_of[n * r.K + j];
        if (row >= 0) ref += static_cast<double>(r.weights[n * r.K + j]) * r.y[row * r.C + c];
      }
      EXPECT_NEAR(o.out[n * r.C + c], ref, 2.4e-7) << n << "," << c;
    }
  }
  EXPECT_EQ(o.dw[5], 0.0f);  // the dropped pair
  const int32_t row = r.row_of[4];
  double dot = 0;
  for (int64_t c = 0; c < r.C; ++c) dot += static_cast<double>(r.dout[2 * r.C + c]) * r.y[row * r.C + c];
  EXPECT_NEAR(o.dw[4], dot, 1e-7);  // fp64 sum, one rounding to fp32
  EXPECT_EQ(o.dy[row * r.C + 3], r.weights[4] * r.dout[2 * r.C + 3]);
  // Pairs per sequence: 5 tokens x 2 choices, experts 0/1 and 2/3 alternating.
  EXPECT_EQ(o.counts, (std::vector<int32_t>{3, 2, 3, 2, 2, 3, 2, 3}));
}

TEST(KernelsMoeCombine, ResultsDoNotDependOnTheThreadCount) {
  Routed r = make();
  const int before = omp_get_max_threads();
  omp_set_num_threads(1);
  const Outputs a = run_all(r);
  omp_set_num_threads(3);
  const Outputs b = run_all(r);
  omp_set_num_threads(before);
  EXPECT_EQ(a.out, b.out);
  EXPECT_EQ(a.dw, b.dw);
  EXPECT_EQ(a.dy, b.dy);
  EXPECT_EQ(a.dx, b.dx);
  EXPECT_EQ(a.dlogit, b.dlogit);
  EXPECT_EQ(a.dwr, b.dwr);
  EXPECT_EQ(a.dxr, b.dxr);
  EXPECT_EQ(a.aux, b.aux);
}

}  // namespace
}  // namespace trident::kernels
