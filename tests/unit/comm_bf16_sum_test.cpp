// The local arithmetic of the bf16 gradient sums (comm/bf16_sum.h): one rounding to bf16 per
// input and one of the fp32 sum, the ranks added in order 0, 1, ..., N-1, ties to even. The
// exchange itself (MPI) is tests/mpi/comm_bf16_collectives_test.cpp. Mutation tried by hand:
// sum_bf16_chunks adding the ranks in reverse order fails SumsInRankOrder (the MPI test's sums of
// 1-4 bf16 values are mostly exact in fp32 and do not see it).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "comm/bf16_sum.h"

namespace trident::comm {
namespace {

using kernels::bf16_t;
using kernels::bf16_to_float;
using kernels::float_to_bf16;

TEST(Bf16Sum, RoundsEachInputToNearestEven) {
  // 1 + 2^-8 is halfway between bf16's 1 and 1 + 2^-7: ties go to the even mantissa (1);
  // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: to 1 + 2^-6 (even).
  const std::vector<float> x{1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 1.0f + 0x1p-9f, -2.5f};
  std::vector<bf16_t> b(x.size());
  round_to_bf16(x.data(), static_cast<int64_t>(x.size()), b.data());
  std::vector<float> w(x.size());
  widen_from_bf16(b.data(), static_cast<int64_t>(b.size()), w.data());
  EXPECT_EQ(w[0], 1.0f);
  EXPECT_EQ(w[1], 1.0f + 0x1p-6f);
  EXPECT_EQ(w[2], 1.0f);
  EXPECT_EQ(w[3], -2.5f);
}

TEST(Bf16Sum, AddsInFp32AndRoundsTheSumOnce) {
  // Eight ranks each holding 1 + 2^-7 (exact in bf16): the fp32 sum is 8 + 2^-4, exact; bf16's
  // spacing at 8 is 2^-4, so it stays. Summing pairwise in bf16 would round at every step:
  // (1 + 2^-7) * 2 = 2 + 2^-6 is exact, but 3 * (1 + 2^-7) = 3 + 3 * 2^-7 is not (spacing 2^-6).
  const int parts = 8;
  std::vector<bf16_t> in(parts, float_to_bf16(1.0f + 0x1p-7f));
  bf16_t out = 0;
  sum_bf16_chunks(in.data(), parts, 1, &out);
  EXPECT_EQ(bf16_to_float(out), 8.0f + 0x1p-4f);
}

TEST(Bf16Sum, SumsInRankOrder) {
  // Where fp32 itself rounds the order shows: 2^24, 1, 1, -2^24 in rank order gives 0 (each 1
  // is lost against 2^24, a tie to even), while the ranks in the order 1, 1, 2^24, -2^24 give 2.
  const std::vector<bf16_t> in{float_to_bf16(0x1p24f), float_to_bf16(1.0f), float_to_bf16(1.0f),
                               float_to_bf16(-0x1p24f)};
  bf16_t out = 0;
  sum_bf16_chunks(in.data(), 4, 1, &out);
  EXPECT_EQ(bf16_to_float(out), 0.0f);
  const std::vector<bf16_t> other{float_to_bf16(1.0f), float_to_bf16(1.0f), float_to_bf16(0x1p24f),
                                  float_to_bf16(-0x1p24f)};
  sum_bf16_chunks(other.data(), 4, 1, &out);
  EXPECT_EQ(bf16_to_float(out), 2.0f);
}

TEST(Bf16Sum, ChunksAreLaidOutRankMajor) {
  // parts x n values: rank s's element i at s * n + i.
  const int parts = 3;
  const int64_t n = 4;
  std::vector<bf16_t> in(static_cast<std::size_t>(parts * n));
  for (int s = 0; s < parts; ++s)
    for (int64_t i = 0; i < n; ++i) in[static_cast<std::size_t>(s * n + i)] = float_to_bf16(static_cast<float>((s + 1) * (i + 1)));
  std::vector<bf16_t> out(static_cast<std::size_t>(n));
  sum_bf16_chunks(in.data(), parts, n, out.data());
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(bf16_to_float(out[static_cast<std::size_t>(i)]), 6.0f * static_cast<float>(i + 1));
}

TEST(Bf16Sum, NonFiniteValuesPropagate) {
  // The fp16 loss scaler's overflow check reads the reduced gradient: an inf or NaN on one rank
  // must reach the sum.
  // Rank 0 holds {inf, 1}, rank 1 {1, NaN}.
  const std::vector<bf16_t> in{float_to_bf16(INFINITY), float_to_bf16(1.0f), float_to_bf16(1.0f), float_to_bf16(NAN)};
  std::vector<bf16_t> out(2);
  sum_bf16_chunks(in.data(), 2, 2, out.data());
  EXPECT_TRUE(std::isinf(bf16_to_float(out[0])));
  EXPECT_TRUE(std::isnan(bf16_to_float(out[1])));
}

}  // namespace
}  // namespace trident::comm
