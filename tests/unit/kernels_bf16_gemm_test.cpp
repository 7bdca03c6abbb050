// The own AVX-512 BF16 GEMM (kernels/gemm_bf16_avx512.h, via Bf16Gemm's kAvx512Bf16 backend)
// against a double reference of the same bf16 inputs, in every transpose form, overwrite and
// accumulate, on shapes that straddle every block size of the kernel (micro-tile 8 x 48,
// k slices of 768, row blocks of 96, column blocks of 1536) and on odd k.
//
// Tolerance, a worst-case bound rather than a statistical one: a bf16 x bf16 product has at
// most 16 significant bits, so it is exact in fp32 (24), and the only error is the fp32
// summation of the K products and beta * C. However the kernel groups that sum (pairs per
// vdpbf16ps, slices of k added into C), each term passes through at most K roundings of
// relative size u = 2^-24, so |C - ref| <= gamma_K (sum_k |a_k b_k| + |beta C|) with
// gamma_K = K u / (1 - K u) (Higham, Accuracy and Stability, 4.2). vdpbf16ps also flushes
// subnormal results to zero, at most 2^-126 per rounding: K 2^-126 more, absolute.
// The bound still catches every real fault: with entries uniform in [-1, 1] it is about
// K^2 u / 4 (0.016 at K = 1031), while one lost or misplaced product is ~0.25 and a NaN read
// from the padding past a row's end (the padding holds NaN) poisons the result.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/bf16.h"
#include "kernels/matmul_bf16.h"

namespace trident::kernels {
namespace {

constexpr bf16_t kNanBf16 = 0x7FC0;

struct Problem {
  bool ta, tb;
  int64_t M, N, K;
  int64_t lda, ldb, ldc;
  std::vector<bf16_t> A, B;
  std::vector<float> C0;
};

// Random entries in [-1, 1]; every padding element of A and B (past the logical rows or
// columns) is NaN, so a kernel that reads it is caught.
Problem make_problem(bool ta, bool tb, int64_t M, int64_t N, int64_t K) {
  Problem p{ta, tb, M, N, K, (ta ? M : K) + 3, (tb ? K : N) + 5, N + 2, {}, {}, {}};
  std::mt19937 gen(static_cast<uint32_t>(M * 131 + N * 7 + K + (ta ? 1000 : 0) + (tb ? 2000 : 0)));
  std::uniform_real_distribution<float> d(-1, 1);
  const int64_t a_rows = ta ? K : M, a_cols = ta ? M : K, b_rows = tb ? N : K, b_cols = tb ? K : N;
  p.A.assign(static_cast<size_t>(a_rows * p.lda), kNanBf16);
  p.B.assign(static_cast<size_t>(b_rows * p.ldb), kNanBf16);
  for (int64_t r = 0; r < a_rows; ++r) {
    for (int64_t c = 0; c < a_cols; ++c) p.A[r * p.lda + c] = float_to_bf16(d(gen));
  }
  for (int64_t r = 0; r < b_rows; ++r) {
    for (int64_t c = 0; c < b_cols; ++c) p.B[r * p.ldb + c] = float_to_bf16(d(gen));
  }
  p.C0.resize(static_cast<size_t>(M * p.ldc));
  for (auto& v : p.C0) v = d(gen);
  return p;
}

std::vector<float> run(Bf16Gemm& g, const Problem& p, float beta) {
  std::vector<float> C = p.C0;
  g.gemm(p.ta, p.tb, p.M, p.N, p.K, p.A.data(), p.lda, p.B.data(), p.ldb, beta, C.data(), p.ldc);
  return C;
}

// Checks C against the double reference within the bound in the file comment; returns the
// number of elements outside it (0 expected), reporting the first few.
int64_t count_wrong(const Problem& p, float beta, const std::vector<float>& C) {
  const double u = std::ldexp(1.0, -24), K = static_cast<double>(p.K);
  const double gamma = K * u / (1 - K * u), flush = K * std::ldexp(1.0, -126);
  int64_t wrong = 0;
  for (int64_t m = 0; m < p.M; ++m) {
    for (int64_t n = 0; n < p.ldc; ++n) {
      const float got = C[m * p.ldc + n];
      if (n >= p.N) {  // C's padding columns are never written
        EXPECT_EQ(std::memcmp(&got, &p.C0[m * p.ldc + n], sizeof got), 0)
            << "padding of C written at " << m << "," << n;
        continue;
      }
      double ref = beta * p.C0[m * p.ldc + n], mag = std::abs(ref);
      for (int64_t k = 0; k < p.K; ++k) {
        const double a = bf16_to_float(p.ta ? p.A[k * p.lda + m] : p.A[m * p.lda + k]);
        const double b = bf16_to_float(p.tb ? p.B[n * p.ldb + k] : p.B[k * p.ldb + n]);
        ref += a * b;
        mag += std::abs(a * b);
      }
      const double err = std::abs(static_cast<double>(got) - ref);
      if (!(err <= gamma * mag + flush)) {
        if (++wrong <= 3) {
          ADD_FAILURE() << "ta=" << p.ta << " tb=" << p.tb << " beta=" << beta << " M=" << p.M << " N=" << p.N
                        << " K=" << p.K << " at " << m << "," << n << ": got " << got << ", reference " << ref
                        << ", bound " << gamma * mag + flush;
        }
      }
    }
  }
  return wrong;
}

bool have_kernel() { return cpu_has_avx512_bf16(); }

struct Dims {
  int64_t M, N, K;
};

// Each straddles a block boundary of the kernel (8 x 48 tiles, k slices of 768 in pairs,
// 96-row and 1536-column blocks) or is degenerate-small.
const Dims kShapes[] = {
    {1, 1, 1},      {1, 1, 2},      {3, 5, 7},       {7, 47, 767},  {8, 48, 768},  {9, 49, 769},
    {37, 29, 131},  {17, 100, 513}, {200, 1537, 5},  {193, 50, 300}, {1, 300, 77},  {256, 320, 1031},
    {97, 1537, 770},
};

TEST(Bf16GemmAvx512, MatchesFp64ReferenceInEveryForm) {
  if (!have_kernel()) GTEST_SKIP() << "this CPU has no AVX-512 BF16";
  Bf16Gemm g(Bf16Backend::kAvx512Bf16);
  ASSERT_EQ(g.backend(), Bf16Backend::kAvx512Bf16);
  for (const Dims& d : kShapes) {
    for (int form = 0; form < 4; ++form) {
      const Problem p = make_problem((form & 1) != 0, (form & 2) != 0, d.M, d.N, d.K);
      for (float beta : {0.0f, 1.0f}) {
        EXPECT_EQ(count_wrong(p, beta, run(g, p, beta)), 0);
      }
    }
  }
}

TEST(Bf16GemmAvx512, ResultDoesNotDependOnThreadCount) {
  // The header promises a fixed summation order per shape: 1 and 2 threads agree bit for bit.
  if (!have_kernel()) GTEST_SKIP() << "this CPU has no AVX-512 BF16";
  Bf16Gemm g(Bf16Backend::kAvx512Bf16);
  const int saved = omp_get_max_threads();
  for (int form = 0; form < 4; ++form) {
    const Problem p = make_problem((form & 1) != 0, (form & 2) != 0, 131, 389, 517);
    omp_set_num_threads(1);
    const std::vector<float> one = run(g, p, 1.0f);
    omp_set_num_threads(2);
    const std::vector<float> two = run(g, p, 1.0f);
    EXPECT_EQ(std::memcmp(one.data(), two.data(), one.size() * sizeof(float)), 0) << "form " << form;
  }
  omp_set_num_threads(saved);
}

TEST(Bf16GemmAvx512, ReusedAcrossShapes) {
  // The pack buffers live in the Bf16Gemm between calls: a big call then a small one must not
  // see stale panels.
  if (!have_kernel()) GTEST_SKIP() << "this CPU has no AVX-512 BF16";
  Bf16Gemm g(Bf16Backend::kAvx512Bf16);
  const Problem big = make_problem(false, true, 64, 500, 600), small = make_problem(false, true, 3, 9, 5);
  EXPECT_EQ(count_wrong(big, 0.0f, run(g, big, 0.0f)), 0);
  EXPECT_EQ(count_wrong(small, 0.0f, run(g, small, 0.0f)), 0);
}

TEST(Bf16GemmAvx512, AutoChoosesItWithoutAmx) {
  Bf16Gemm g;
  std::printf("bf16 gemm backend: %s\n", g.describe().c_str());
  if (g.backend() == Bf16Backend::kOneDnn) {
    EXPECT_NE(g.describe().find("amx"), std::string::npos) << "kAuto takes oneDNN only for its AMX kernel";
  } else if (have_kernel()) {
    EXPECT_EQ(g.backend(), Bf16Backend::kAvx512Bf16);
  } else {
    EXPECT_EQ(g.backend(), Bf16Backend::kFallback);
    EXPECT_THROW(Bf16Gemm forced(Bf16Backend::kAvx512Bf16), std::exception);
  }
}

}  // namespace
}  // namespace trident::kernels
