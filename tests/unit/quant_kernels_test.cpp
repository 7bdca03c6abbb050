// Quantized formats and kernels against fp64 references built from the dequantized weights:
// round-trip error within half a step, int8's VNNI and portable paths bitwise equal, q4's
// kernels within the fp32 summation bound of its dequantized dot product.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "core/check.h"
#include "quant/quant_format.h"
#include "quant/quant_matmul.h"

namespace trident::quant {
namespace {

std::vector<float> random_matrix(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = d(rng);
  return v;
}

constexpr double kEps = std::numeric_limits<float>::epsilon();  // 2^-23

TEST(QuantFormat, RoundTripWithinHalfAStep) {
  const int64_t O = 24, I = 256;
  const auto w = random_matrix(O * I, 1, 0.05f);
  for (const auto& [format, group] : {std::pair{Format::kInt8, 0}, {Format::kQ4, 32}, {Format::kQ4, 64},
                                     {Format::kQ4, 128}}) {
    const QuantMatrix m = quantize(w.data(), O, I, format, group);
    double worst = 0.0;
    for (int64_t o = 0; o < O; ++o) {
      for (int64_t i = 0; i < I; ++i) {
        const double wi = w[static_cast<std::size_t>(o * I + i)];
        // Half a step, plus the fp32 rounding of w / s (or (w - m) / s) and of s q + m.
        const double bound = 0.5 * step_at(m, o, i) * (1 + 4 * kEps) + 4 * kEps * std::abs(wi) + 1e-12;
        const double err = std::abs(m.at(o, i) - wi);
        ASSERT_LE(err, bound) << format_name(format) << " g" << group << " at " << o << "," << i;
        worst = std::max(worst, err / step_at(m, o, i));
      }
    }
    // Rounding to nearest uses the grid: the worst error is close to half a step, not far below.
    EXPECT_GT(worst, 0.4) << format_name(format);
  }
}

TEST(QuantFormat, BadGroupSizes) {
  const auto w = random_matrix(4 * 96, 2);
  EXPECT_THROW(quantize(w.data(), 4, 96, Format::kQ4, 48), Error);   // not 32/64/128
  EXPECT_THROW(quantize(w.data(), 4, 96, Format::kQ4, 64), Error);   // does not divide 96
  EXPECT_NO_THROW(quantize(w.data(), 4, 96, Format::kQ4, 32));
  EXPECT_THROW(parse_format("int4"), Error);
}

TEST(QuantMatmul, Int8PathsAreBitwiseEqualAndMatchTheIntegerReference) {
  // I = 200: three full 64-byte VNNI chunks and a tail.
  const int64_t N = 3, O = 37, I = 200;
  const auto w = random_matrix(O * I, 3, 0.05f);
  const auto x = random_matrix(N * I, 4);
  const auto bias = random_matrix(O, 5);
  const QuantMatrix m = quantize(w.data(), O, I, Format::kInt8);
  std::vector<float> portable(static_cast<std::size_t>(N * O)), simd(portable.size());
  LinearScratch s;
  quant_linear(portable.data(), x.data(), m, bias.data(), N, s, KernelPath::kPortable);
  if (cpu_has_avx512_vnni()) {
    quant_linear(simd.data(), x.data(), m, bias.data(), N, s, KernelPath::kSimd);
    for (std::size_t k = 0; k < simd.size(); ++k) ASSERT_EQ(simd[k], portable[k]) << k;
  } else {
    GTEST_LOG_(INFO) << "no AVX-512 VNNI on this CPU: only the portable path is checked";
  }
  std::vector<int8_t> xq(static_cast<std::size_t>(N * I));
  std::vector<float> xs(static_cast<std::size_t>(N));
  quantize_rows_int8(xq.data(), xs.data(), x.data(), N, I);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t o = 0; o < O; ++o) {
      double ref = 0.0, ref_fp = 0.0, wabs = 0.0;
      for (int64_t i = 0; i < I; ++i) {
        ref += static_cast<double>(xs[static_cast<std::size_t>(n)]) * xq[static_cast<std::size_t>(n * I + i)] * m.at(o, i);
        ref_fp += static_cast<double>(x[static_cast<std::size_t>(n * I + i)]) * m.at(o, i);
        wabs += std::abs(m.at(o, i));
      }
      const double b = bias[static_cast<std::size_t>(o)];
      const double got = portable[static_cast<std::size_t>(n * O + o)];
      // The int32 sum is exact; only s_x * s_o, the conversion and the bias add round.
      ASSERT_NEAR(got, ref + b, 4 * kEps * (std::abs(ref) + std::abs(b)) + 1e-30) << n << "," << o;
      // Against fp32 activations: each activation is off by at most half its step s_x / 2.
      ASSERT_NEAR(got, ref_fp + b, 0.5 * xs[static_cast<std::size_t>(n)] * wabs * (1 + 1e-5) +
                                        4 * kEps * (std::abs(ref) + std::abs(b)));
    }
  }
}

TEST(QuantMatmul, Q4MatchesTheDequantizedReference) {
  const int64_t N = 2, O = 19, I = 256;
  const auto w = random_matrix(O * I, 6, 0.05f);
  const auto x = random_matrix(N * I, 7);
  for (int group : {32, 64, 128}) {
    const QuantMatrix m = quantize(w.data(), O, I, Format::kQ4, group);
    for (KernelPath path : {KernelPath::kPortable, KernelPath::kSimd}) {
      if (path == KernelPath::kSimd && !cpu_has_avx512f()) continue;
      std::vector<float> out(static_cast<std::size_t>(N * O));
      LinearScratch s;
      quant_linear(out.data(), x.data(), m, nullptr, N, s, path);
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t o = 0; o < O; ++o) {
          double ref = 0.0, mag = 0.0;
          for (int64_t i = 0; i < I; ++i) {
            const double p = x[static_cast<std::size_t>(n * I + i)] * m.at(o, i);
            ref += p, mag += std::abs(p);
          }
          // fp32 dot of length I: each weight's dequantization (2 roundings) and product
          // (1), and the sum (I additions at most).
          const double bound = (static_cast<double>(I) + 3) * kEps * mag;
          ASSERT_NEAR(out[static_cast<std::size_t>(n * O + o)], ref, bound) << group << " " << o;
        }
      }
    }
  }
}

}  // namespace
}  // namespace trident::quant
