// Tests of matmul_{forward,backward}(_nt) against a double-precision scalar reference, with
// gradients checked by central finite differences of sum(out * R).
#include "kernels/kernels.h"
#include "kernels_testing.h"

namespace trident::kernels {
namespace {
using testing::expect_close;
using testing::random_floats;
using testing::to_double;

// out (N, OC) = inp (N, C) @ w (C, OC) + bias
std::vector<double> ref_matmul(const std::vector<double>& inp, const std::vector<double>& w,
                               const std::vector<double>* bias, int64_t N, int64_t C, int64_t OC) {
  std::vector<double> out(static_cast<size_t>(N * OC));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < OC; ++o) {
      double s = bias ? (*bias)[o] : 0.0;
      for (int64_t c = 0; c < C; ++c) s += inp[n * C + c] * w[c * OC + o];
      out[n * OC + o] = s;
    }
  return out;
}

// out (N, V) = inp (N, C) @ table (V, C)^T
std::vector<double> ref_matmul_nt(const std::vector<double>& inp, const std::vector<double>& table,
                                  int64_t N, int64_t C, int64_t V) {
  std::vector<double> out(static_cast<size_t>(N * V));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t v = 0; v < V; ++v) {
      double s = 0.0;
      for (int64_t c = 0; c < C; ++c) s += inp[n * C + c] * table[v * C + c];
      out[n * V + v] = s;
    }
  return out;
}

// Inputs are uniform in [-1, 1], so a K-term dot product has |terms| <= 1 and fp32 rounding
// error of about sqrt(K) * 6e-8 (random-walk accumulation), at worst K * 6e-8. For K <= 200
// that is < 1.2e-5 even in the worst case: atol 2e-5. Finite differences in double add ~1e-8.
constexpr double kAtol = 2e-5;
constexpr double kRtol = 1e-5;

struct Sizes {
  int64_t N, C, OC;
};

class MatmulTest : public ::testing::TestWithParam<Sizes> {};

TEST_P(MatmulTest, ForwardMatchesReference) {
  const auto [N, C, OC] = GetParam();
  const auto inp = random_floats(N * C, 1);
  const auto w = random_floats(C * OC, 2);
  const auto bias = random_floats(OC, 3);
  std::vector<float> out(static_cast<size_t>(N * OC), 123.0f);  // garbage: must be overwritten
  matmul_forward(out.data(), inp.data(), w.data(), bias.data(), N, C, OC);
  const auto bd = to_double(bias);
  expect_close(out, ref_matmul(to_double(inp), to_double(w), &bd, N, C, OC), kRtol, kAtol, "out");
  std::fill(out.begin(), out.end(), 123.0f);
  matmul_forward(out.data(), inp.data(), w.data(), nullptr, N, C, OC);
  expect_close(out, ref_matmul(to_double(inp), to_double(w), nullptr, N, C, OC), kRtol, kAtol,
               "out without bias");
}

TEST_P(MatmulTest, BackwardMatchesFiniteDifferences) {
  const auto [N, C, OC] = GetParam();
  const auto inp = random_floats(N * C, 4);
  const auto w = random_floats(C * OC, 5);
  const auto bias = random_floats(OC, 6);
  const auto R = random_floats(N * OC, 7);  // dout of the objective sum(out * R)
  const auto Rd = to_double(R);
  const auto id = to_double(inp), wd = to_double(w), bd = to_double(bias);

  // Parameter gradients accumulate: start them at known values and subtract afterwards.
  const auto dw0 = random_floats(C * OC, 8);
  const auto db0 = random_floats(OC, 9);
  std::vector<float> dinp(static_cast<size_t>(N * C), 77.0f);  // overwritten
  auto dw = dw0;
  auto db = db0;
  matmul_backward(dinp.data(), dw.data(), db.data(), R.data(), inp.data(), w.data(), N, C, OC);
  for (size_t i = 0; i < dw.size(); ++i) dw[i] -= dw0[i];
  for (size_t i = 0; i < db.size(); ++i) db[i] -= db0[i];

  const auto gi = testing::numeric_grad(id, [&](const std::vector<double>& x) {
    return testing::dot(ref_matmul(x, wd, &bd, N, C, OC), Rd);
  });
  const auto gw = testing::numeric_grad(wd, [&](const std::vector<double>& x) {
    return testing::dot(ref_matmul(id, x, &bd, N, C, OC), Rd);
  });
  const auto gb = testing::numeric_grad(bd, [&](const std::vector<double>& x) {
    return testing::dot(ref_matmul(id, wd, &x, N, C, OC), Rd);
  });
  // The accumulation (x + g - x) adds one rounding of |x| <= 1: 6e-8, inside kAtol.
  expect_close(dinp, gi, kRtol, kAtol, "dinp");
  expect_close(dw, gw, kRtol, kAtol, "dweight");
  expect_close(db, gb, kRtol, kAtol, "dbias");

  // Null dinp and dbias are skipped; dweight still accumulates (twice now).
  auto dw2 = dw0;
  matmul_backward(nullptr, dw2.data(), nullptr, R.data(), inp.data(), w.data(), N, C, OC);
  matmul_backward(nullptr, dw2.data(), nullptr, R.data(), inp.data(), w.data(), N, C, OC);
  std::vector<double> twice(gw.size());
  for (size_t i = 0; i < gw.size(); ++i) twice[i] = dw0[i] + 2.0 * gw[i];
  expect_close(dw2, twice, kRtol, 2 * kAtol, "dweight accumulated twice");
}

TEST_P(MatmulTest, TransposedTableForwardAndBackward) {
  const auto [N, C, V] = GetParam();
  const auto inp = random_floats(N * C, 10);
  const auto table = random_floats(V * C, 11);
  const auto R = random_floats(N * V, 12);
  const auto id = to_double(inp), td = to_double(table), Rd = to_double(R);

  std::vector<float> out(static_cast<size_t>(N * V), 5.0f);
  matmul_forward_nt(out.data(), inp.data(), table.data(), N, C, V);
  expect_close(out, ref_matmul_nt(id, td, N, C, V), kRtol, kAtol, "nt out");

  const auto dt0 = random_floats(V * C, 13);
  auto dt = dt0;
  std::vector<float> dinp(static_cast<size_t>(N * C), 9.0f);
  matmul_backward_nt(dinp.data(), dt.data(), R.data(), inp.data(), table.data(), N, C, V);
  for (size_t i = 0; i < dt.size(); ++i) dt[i] -= dt0[i];
  const auto gi = testing::numeric_grad(id, [&](const std::vector<double>& x) {
    return testing::dot(ref_matmul_nt(x, td, N, C, V), Rd);
  });
  const auto gt = testing::numeric_grad(td, [&](const std::vector<double>& x) {
    return testing::dot(ref_matmul_nt(id, x, N, C, V), Rd);
  });
  expect_close(dinp, gi, kRtol, kAtol, "nt dinp");
  expect_close(dt, gt, kRtol, kAtol, "nt dtable");
}

// Odd sizes (not multiples of the SIMD width), a single row, and one big enough for BLAS's
// blocked/threaded paths.
INSTANTIATE_TEST_SUITE_P(Sizes, MatmulTest,
                         ::testing::Values(Sizes{7, 13, 5}, Sizes{1, 3, 1}, Sizes{1, 1, 9},
                                           Sizes{33, 70, 19}));

TEST(Matmul, LargeForwardAgainstReference) {
  // Large enough for OpenBLAS to use several threads and its packed kernels.
  const int64_t N = 96, C = 200, OC = 130;
  const auto inp = random_floats(N * C, 14);
  const auto w = random_floats(C * OC, 15);
  const auto bias = random_floats(OC, 16);
  std::vector<float> out(static_cast<size_t>(N * OC));
  matmul_forward(out.data(), inp.data(), w.data(), bias.data(), N, C, OC);
  const auto bd = to_double(bias);
  expect_close(out, ref_matmul(to_double(inp), to_double(w), &bd, N, C, OC), kRtol, kAtol, "out");
}

TEST(Matmul, EmptyReductionZeroesOutputs) {
  // C = 0: out = bias, dweight untouched, dinp empty.
  const int64_t N = 3, C = 0, OC = 4;
  std::vector<float> bias = {1, 2, 3, 4};
  std::vector<float> out(static_cast<size_t>(N * OC), 9.0f);
  matmul_forward(out.data(), nullptr, nullptr, bias.data(), N, C, OC);
  for (int64_t i = 0; i < N * OC; ++i) EXPECT_EQ(out[static_cast<size_t>(i)], bias[static_cast<size_t>(i % OC)]);
  matmul_forward(out.data(), nullptr, nullptr, nullptr, N, C, OC);
  for (float x : out) EXPECT_EQ(x, 0.0f);
}

TEST(Threads, SetAndGet) {
  const int before = num_threads();
  set_num_threads(1);
  EXPECT_EQ(num_threads(), 1);
  set_num_threads(2);
  EXPECT_EQ(num_threads(), 2);
  set_num_threads(before);
  EXPECT_THROW(set_num_threads(0), std::exception);
}

}  // namespace
}  // namespace trident::kernels
