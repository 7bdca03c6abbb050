// Stochastic bf16 rounding of arrays (kernels/bf16_stochastic.h): the AVX-512 path gives
// exactly the scalar path's bits for every element, over lengths 0..300 and odd ones beyond
// (heads, whole 128-element passes, tails), first indices at every residue mod 8 and across the
// 2^32 block boundary (the counter's high word), and special values (zeros, subnormals, infs,
// NaNs, values that round up into inf); both equal the formula written out from core/rng.h's
// philox4x32, and a split into calls at any point changes nothing.
// Mutations tried by hand: taking v2 for v1 in the transpose's third lane shuffle fails
// AvxEqualsScalar (n 128, element 64); dropping the NaN quieting in round16 fails it (the
// signalling NaN at element 3) and the formula test.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/rng.h"
#include "kernels/bf16_stochastic.h"

namespace trident {
namespace {

using kernels::bf16_t;

std::vector<float> inputs(int64_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<std::size_t>(n));
  const float specials[] = {0.0f, -0.0f, 1e-40f, -1e-40f, std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN(),
                            -std::numeric_limits<float>::quiet_NaN(), 3.3895e38f, -3.3895e38f, 1.0f};
  for (int64_t i = 0; i < n; ++i) {
    x[static_cast<std::size_t>(i)] = i % 13 == 5 ? specials[(i / 13) % 11] : normal(gen) * std::ldexp(1.0f, static_cast<int>(i % 40) - 20);
  }
  // A signalling NaN's bits (a float literal cannot spell them).
  if (n > 3) {
    const uint32_t snan = 0x7F800001u;
    std::memcpy(&x[3], &snan, sizeof snan);
  }
  return x;
}

// The formula of bf16_stochastic.h, from philox4x32 directly.
bf16_t reference(float f, uint64_t index, const kernels::PhiloxStream& s) {
  const uint64_t block = index >> 3;
  const auto w = philox4x32({static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                             static_cast<uint32_t>(s.counter_hi), static_cast<uint32_t>(s.counter_hi >> 32)},
                            {static_cast<uint32_t>(s.key), static_cast<uint32_t>(s.key >> 32)});
  return kernels::float_to_bf16_stochastic(f, (w[(index >> 1) & 3] >> (16 * (index & 1))) & 0xFFFFu);
}

const kernels::PhiloxStream kStream{0x0123456789abcdefull, 0xfedcba9876543210ull};

std::vector<int64_t> lengths() {
  std::vector<int64_t> n;
  for (int64_t i = 0; i <= 300; ++i) n.push_back(i);
  for (int64_t i : {383, 511, 1001, 4097, 16385}) n.push_back(i);
  return n;
}

TEST(StochasticRounding, AvxEqualsScalar) {
  if (!kernels::stochastic_rounding_vectorised()) GTEST_SKIP() << "no AVX-512F on this CPU: only the scalar path runs";
  const std::vector<uint64_t> firsts = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 127, 128, 129, 1000003,
                                        (uint64_t{1} << 35) - 61};  // blocks crossing 2^32
  for (const int64_t n : lengths()) {
    const std::vector<float> x = inputs(n, static_cast<uint32_t>(n));
    for (const uint64_t first : firsts) {
      std::vector<bf16_t> fast(x.size(), 0xAAAA), slow(x.size(), 0x5555);
      kernels::round_to_bf16_stochastic(fast.data(), x.data(), n, first, kStream);
      kernels::round_to_bf16_stochastic_scalar(slow.data(), x.data(), n, first, kStream);
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_EQ(fast[static_cast<std::size_t>(i)], slow[static_cast<std::size_t>(i)])
            << "n " << n << " first " << first << " element " << i << " value " << x[static_cast<std::size_t>(i)];
      }
    }
  }
}

TEST(StochasticRounding, BothPathsAreTheFormulaAndSplitFree) {
  const int64_t n = 1001;
  const std::vector<float> x = inputs(n, 7);
  const uint64_t first = 29;
  for (const bool scalar : {true, false}) {
    kernels::force_scalar_stochastic_rounding(scalar);
    std::vector<bf16_t> whole(x.size()), split(x.size());
    kernels::round_to_bf16_stochastic(whole.data(), x.data(), n, first, kStream);
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(whole[static_cast<std::size_t>(i)], reference(x[static_cast<std::size_t>(i)], first + i, kStream))
          << (scalar ? "scalar" : "dispatched") << " element " << i;
    }
    for (const int64_t cut : {int64_t{1}, int64_t{130}, int64_t{500}, n - 1}) {
      kernels::round_to_bf16_stochastic(split.data(), x.data(), cut, first, kStream);
      kernels::round_to_bf16_stochastic(split.data() + cut, x.data() + cut, n - cut, first + cut, kStream);
      ASSERT_EQ(split, whole) << "cut at " << cut;
    }
  }
  kernels::force_scalar_stochastic_rounding(false);
}

// Forcing scalar is reported; lifting it restores the CPU's path.
TEST(StochasticRounding, ForceScalarIsReported) {
  const bool cpu = kernels::stochastic_rounding_vectorised();
  kernels::force_scalar_stochastic_rounding(true);
  EXPECT_FALSE(kernels::stochastic_rounding_vectorised());
  kernels::force_scalar_stochastic_rounding(false);
  EXPECT_EQ(kernels::stochastic_rounding_vectorised(), cpu);
}

}  // namespace
}  // namespace trident
