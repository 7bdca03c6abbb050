// bf16 storage and the bf16 GEMM: round-to-nearest-even conversion on every class of value
// (ties, NaN, inf, overflow, subnormals), the vector path bit-identical to the scalar one,
// stochastic rounding unbiased, and the GEMM (oneDNN where available, and the fallback) in
// every transpose/accumulate combination against a double reference of the same bf16
// inputs. bf16 x bf16 products are exact in fp32 (8 + 8 significant bits), so the only error
// is the fp32 accumulation: ~sqrt(K) u relative to the sum of |products|, bound 4 sqrt(K) u.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "kernels/bf16.h"
#include "kernels/matmul_bf16.h"

namespace trident::kernels {
namespace {

TEST(Bf16, RoundToNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 1.0f / 256)), 1.0f);           // a tie: to even (down)
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 3.0f / 256)), 1.0f + 4.0f / 256);  // a tie: to even (up)
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 1.0f / 256 + 1e-7f)), 1.0f + 2.0f / 256);  // above the tie
  EXPECT_EQ(float_to_bf16(-0.0f), 0x8000);
  EXPECT_TRUE(std::isinf(bf16_to_float(float_to_bf16(std::numeric_limits<float>::infinity()))));
  EXPECT_TRUE(std::isinf(bf16_to_float(float_to_bf16(std::numeric_limits<float>::max()))));  // rounds up to inf
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(nan))));
  // A NaN whose payload sits only in the low 16 bits must not become infinity.
  uint32_t snan_bits = 0x7F800001u;
  float snan;
  std::memcpy(&snan, &snan_bits, 4);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(snan))));
  EXPECT_EQ(float_to_bf16(1e-40f), 0x0000);    // subnormals flush to signed zero (as vcvtne2ps2bf16)
  EXPECT_EQ(float_to_bf16(-1e-40f), 0x8000);
  EXPECT_EQ(float_to_bf16(1.2e-38f), 0x0083);  // the smallest normals stay normal
}

TEST(Bf16, VectorConversionMatchesScalarBitForBit) {
  std::mt19937 gen(1);
  std::vector<float> x(100003);
  for (auto& v : x) {
    uint32_t u = gen();
    std::memcpy(&v, &u, 4);  // every bit pattern: NaNs, infinities, subnormals, ties
  }
  x[5] = 1.0f + 1.0f / 256;
  std::vector<bf16_t> out(x.size());
  convert_to_bf16(out.data(), x.data(), static_cast<int64_t>(x.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    const bf16_t s = float_to_bf16(x[i]);
    if (std::isnan(x[i])) {
      ASSERT_TRUE(std::isnan(bf16_to_float(out[i]))) << i;  // NaN payload bits may differ
    } else {
      ASSERT_EQ(out[i], s) << i << " " << x[i];
    }
  }
  std::vector<float> back(x.size());
  convert_from_bf16(back.data(), out.data(), static_cast<int64_t>(x.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    if (!std::isnan(back[i])) {
      ASSERT_EQ(back[i], bf16_to_float(out[i]));
    }
  }
}

TEST(Bf16, StochasticRoundingIsUnbiased) {
  // 1 + 0.3 ulp(bf16): rounds up with probability 0.3; the mean over 2^16 draws equals x up
  // to the binomial noise (sd = ulp * sqrt(0.21 / 2^16) ~ 0.0018 ulp).
  const float ulp = 1.0f / 128, x = 1.0f + 0.3f * ulp;
  double sum = 0;
  const int n = 1 << 16;
  std::mt19937 gen(2);
  for (int i = 0; i < n; ++i) sum += bf16_to_float(float_to_bf16_stochastic(x, gen()));
  EXPECT_NEAR(sum / n, x, 0.01 * ulp);
  EXPECT_EQ(float_to_bf16_stochastic(1.0f, 0xFFFF), 0x3F80);  // representable values never move
}

struct GemmCase {
  bool ta, tb;
  float beta;
};

void check_gemm(Bf16Gemm& g, GemmCase c, int64_t M, int64_t N, int64_t K) {
  std::mt19937 gen(static_cast<uint32_t>(M * 131 + N * 7 + K));
  std::uniform_real_distribution<float> d(-1, 1);
  const int64_t lda = (c.ta ? M : K) + 3, ldb = (c.tb ? K : N) + 5, ldc = N + 2;  // padded leading dims
  std::vector<bf16_t> A(static_cast<size_t>((c.ta ? K : M) * lda)), B(static_cast<size_t>((c.tb ? N : K) * ldb));
  for (auto& v : A) v = float_to_bf16(d(gen));
  for (auto& v : B) v = float_to_bf16(d(gen));
  std::vector<float> C(static_cast<size_t>(M * ldc));
  for (auto& v : C) v = d(gen);
  const std::vector<float> C0 = C;
  g.gemm(c.ta, c.tb, M, N, K, A.data(), lda, B.data(), ldb, c.beta, C.data(), ldc);
  const double u = std::ldexp(1.0, -24), bound = 4 * std::sqrt(static_cast<double>(K)) * u;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < ldc; ++n) {
      if (n >= N) {  // padding columns of C are never touched
        ASSERT_EQ(C[m * ldc + n], C0[m * ldc + n]);
        continue;
      }
      double ref = c.beta * C0[m * ldc + n], mag = std::abs(ref);
      for (int64_t k = 0; k < K; ++k) {
        const double a = bf16_to_float(c.ta ? A[k * lda + m] : A[m * lda + k]);
        const double b = bf16_to_float(c.tb ? B[n * ldb + k] : B[k * ldb + n]);
        ref += a * b;
        mag += std::abs(a * b);
      }
      ASSERT_LE(std::abs(C[m * ldc + n] - ref), bound * mag + 1e-30)
          << g.describe() << " ta=" << c.ta << " tb=" << c.tb << " beta=" << c.beta << " at " << m << "," << n;
    }
  }
}

void check_all(Bf16Gemm& g) {
  for (GemmCase c : {GemmCase{false, false, 0}, {false, true, 0}, {true, false, 0}, {true, true, 1}, {false, false, 1},
                     {true, false, 1}}) {
    check_gemm(g, c, 37, 29, 131);
    check_gemm(g, c, 1, 1, 1);
    check_gemm(g, c, 64, 96, 256);
  }
}

TEST(Bf16Gemm, FallbackMatchesReference) {
  Bf16Gemm g(Bf16Backend::kFallback);
  EXPECT_EQ(g.backend(), Bf16Backend::kFallback);
  check_all(g);
}

TEST(Bf16Gemm, AutoBackendMatchesReference) {
  Bf16Gemm g;
  std::printf("bf16 gemm backend: %s\n", g.describe().c_str());
  check_all(g);
}

TEST(Bf16Gemm, OneDnnWhereAvailable) {
  try {
    Bf16Gemm g(Bf16Backend::kOneDnn);
    std::printf("oneDNN bf16 kernel: %s\n", g.describe().c_str());
    check_all(g);
  } catch (const std::exception& e) {
    // A CPU without AVX-512 BF16 or AMX: kAuto's fallback (tested above) is what runs there.
    std::printf("no oneDNN bf16 kernel on this CPU: %s\n", e.what());
    Bf16Gemm g;
    EXPECT_EQ(g.backend(), Bf16Backend::kFallback);
  }
}

TEST(Bf16Gemm, EmptyAndRejectedBeta) {
  Bf16Gemm g;
  std::vector<float> C = {5, 5};
  g.gemm(false, false, 1, 2, 0, nullptr, 1, nullptr, 2, 0.0f, C.data(), 2);  // K = 0, beta 0: zeros
  EXPECT_EQ(C, (std::vector<float>{0, 0}));
  EXPECT_THROW(g.gemm(false, false, 1, 2, 1, nullptr, 1, nullptr, 2, 0.5f, C.data(), 2), std::exception);
}

}  // namespace
}  // namespace trident::kernels
