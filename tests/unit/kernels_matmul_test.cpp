// Tests of matmul_{forward,backward}(_nt) against a double-precision scalar reference, with
// gradients checked by central finite differences of sum(out * R).
#include <cmath>
#include <cstring>

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

// C (M, Nc) = beta * C + op(A) op(B) in double, with each element's sum of |terms| beside it:
// fp32 accumulation of K products is within K * u * sum|a_i b_i| (u = 2^-24) of the exact sum,
// whatever order or blocking the BLAS chooses (Higham, the gamma_K bound), plus half an ulp
// for the final rounding.
struct RefProduct {
  std::vector<double> value, bound;
};
RefProduct ref_gemm(bool ta, bool tb, int64_t M, int64_t Nc, int64_t K, const std::vector<float>& A,
                    const std::vector<float>& B, const std::vector<float>& C0) {
  RefProduct r{std::vector<double>(static_cast<size_t>(M * Nc)), std::vector<double>(static_cast<size_t>(M * Nc))};
  const double u = 0x1p-24;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < Nc; ++j) {
      const size_t ij = static_cast<size_t>(i * Nc + j);
      double s = C0.empty() ? 0.0 : C0[ij], mag = std::abs(s);
      for (int64_t k = 0; k < K; ++k) {
        const double a = ta ? A[static_cast<size_t>(k * M + i)] : A[static_cast<size_t>(i * K + k)];
        const double b = tb ? B[static_cast<size_t>(j * K + k)] : B[static_cast<size_t>(k * Nc + j)];
        s += a * b;
        mag += std::abs(a * b);
      }
      r.value[ij] = s;
      r.bound[ij] = static_cast<double>(K + 1) * u * mag + u * std::abs(s);
    }
  return r;
}

void expect_within_bound(const std::vector<float>& got, const RefProduct& ref, const char* what) {
  ASSERT_EQ(got.size(), ref.value.size());
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_LE(std::abs(static_cast<double>(got[i]) - ref.value[i]), ref.bound[i]) << what << " element " << i;
}

// Products large enough to be threaded (above kernels/matmul.cpp's one-thread threshold): the
// forward and both backward products of both layouts, the weight gradients accumulating into
// non-zero values, at two threads; each within its rounding bound and bitwise repeatable.
TEST(Matmul, ThreadedProductsWithinRoundingBoundAndRepeatable) {
  const int before = num_threads();
  set_num_threads(2);
  const int64_t N = 256, C = 160, OC = 96;
  const auto inp = random_floats(N * C, 21);
  const auto w = random_floats(C * OC, 22);
  const auto dout = random_floats(N * OC, 23);
  const auto dw0 = random_floats(C * OC, 24);
  auto run = [&] {
    std::vector<std::vector<float>> r(6);
    r[0].resize(static_cast<size_t>(N * OC));
    matmul_forward(r[0].data(), inp.data(), w.data(), nullptr, N, C, OC);
    r[1].resize(static_cast<size_t>(N * C));
    r[2] = dw0;
    matmul_backward(r[1].data(), r[2].data(), nullptr, dout.data(), inp.data(), w.data(), N, C, OC);
    // The tied-head layout: table (V, C) with V = OC.
    r[3].resize(static_cast<size_t>(N * OC));
    matmul_forward_nt(r[3].data(), inp.data(), w.data(), N, C, OC);  // w read as (OC, C)
    r[4].resize(static_cast<size_t>(N * C));
    r[5] = dw0;                                                       // read as (OC, C)
    matmul_backward_nt(r[4].data(), r[5].data(), dout.data(), inp.data(), w.data(), N, C, OC);
    return r;
  };
  const auto a = run();
  expect_within_bound(a[0], ref_gemm(false, false, N, OC, C, inp, w, {}), "fwd out");
  expect_within_bound(a[1], ref_gemm(false, true, N, C, OC, dout, w, {}), "bwd dinp");
  expect_within_bound(a[2], ref_gemm(true, false, C, OC, N, inp, dout, dw0), "bwd dweight");
  expect_within_bound(a[3], ref_gemm(false, true, N, OC, C, inp, w, {}), "nt out");
  expect_within_bound(a[4], ref_gemm(false, false, N, C, OC, dout, w, {}), "nt dinp");
  expect_within_bound(a[5], ref_gemm(true, false, OC, C, N, dout, inp, dw0), "nt dtable");
  const auto b = run();
  for (size_t k = 0; k < a.size(); ++k)
    EXPECT_EQ(0, std::memcmp(a[k].data(), b[k].data(), a[k].size() * sizeof(float))) << "product " << k;
  set_num_threads(before);
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
