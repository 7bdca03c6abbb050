// fp16 rounding (kernels/fp16.h): the scalar conversion against the IEEE rules on every class
// of value and against the compiler's own _Float16 where it has one, and the array path (AVX-512F
// vcvtps2ph where present) bitwise the scalar one.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kernels/fp16.h"

namespace trident::kernels {
namespace {

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

TEST(Fp16, RoundsToNearestEvenWithIeeeEdges) {
  EXPECT_EQ(round_to_fp16(1.0f), 1.0f);
  EXPECT_EQ(round_to_fp16(65504.0f), 65504.0f);                    // largest finite
  EXPECT_EQ(round_to_fp16(65519.99f), 65504.0f);                   // below the halfway point
  EXPECT_TRUE(std::isinf(round_to_fp16(65520.0f)));                // halfway: ties to even = inf
  EXPECT_TRUE(std::isinf(round_to_fp16(-1e6f)) && round_to_fp16(-1e6f) < 0);
  EXPECT_EQ(round_to_fp16(1.0f + 0x1p-11f), 1.0f);                 // tie between 1 and 1+2^-10: even
  EXPECT_EQ(round_to_fp16(1.0f + 3 * 0x1p-11f), 1.0f + 0x1p-9f);   // tie: up to the even one
  EXPECT_EQ(round_to_fp16(1.0f + 0x1p-11f + 0x1p-20f), 1.0f + 0x1p-10f);  // above the tie
  EXPECT_EQ(round_to_fp16(0x1p-24f), 0x1p-24f);                    // smallest subnormal kept
  EXPECT_EQ(round_to_fp16(0x1p-25f), 0.0f);                        // tie to zero (even)
  EXPECT_EQ(round_to_fp16(3 * 0x1p-25f), 0x1p-23f);                // 1.5 units: up to 2 (even)
  EXPECT_EQ(round_to_fp16(0x1p-14f - 0x1p-26f), 0x1p-14f);         // subnormal rounding up to the smallest normal
  EXPECT_EQ(bits(round_to_fp16(-0.0f)), bits(-0.0f));
  EXPECT_EQ(bits(round_to_fp16(-0x1p-30f)), bits(-0.0f));          // underflow keeps the sign
  EXPECT_TRUE(std::isnan(round_to_fp16(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(std::isinf(round_to_fp16(std::numeric_limits<float>::infinity())));
}

TEST(Fp16, EveryFp16ValueRoundTrips) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = fp16_bits_to_float(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(round_to_fp16(f))) << h;
      continue;
    }
    EXPECT_EQ(float_to_fp16_bits(f), h) << "fp16 bits " << h;
  }
}

#if defined(__FLT16_MAX__)
TEST(Fp16, MatchesTheCompilersFloat16) {
  std::mt19937 gen(5);
  for (int i = 0; i < 2000000; ++i) {
    // Random bit patterns, concentrated on fp16's exponent range (and beyond it both ways).
    const uint32_t u = (gen() & 0x807FFFFFu) | ((96u + gen() % 48u) << 23);
    const float f = from_bits(u);
    const float want = static_cast<float>(static_cast<_Float16>(f));
    ASSERT_EQ(bits(round_to_fp16(f)), bits(want)) << "input bits " << std::hex << u;
  }
}
#endif

TEST(Fp16, ArrayPathIsBitwiseTheScalarOne) {
  std::mt19937 gen(9);
  std::vector<float> in;
  for (int i = 0; i < (1 << 20) + 37; ++i) in.push_back(from_bits((gen() & 0x807FFFFFu) | ((90u + gen() % 60u) << 23)));
  in.push_back(65520.0f), in.push_back(0x1p-25f), in.push_back(-0.0f);
  in.push_back(std::numeric_limits<float>::infinity());
  std::vector<float> out(in.size());
  round_to_fp16(out.data(), in.data(), static_cast<int64_t>(in.size()));
  for (size_t i = 0; i < in.size(); ++i) {
    ASSERT_EQ(bits(out[i]), bits(round_to_fp16(in[i]))) << "input bits " << std::hex << bits(in[i]);
  }
}

}  // namespace
}  // namespace trident::kernels
