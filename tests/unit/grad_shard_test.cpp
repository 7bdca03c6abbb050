// The 16-bit gradient store (parallel/grad_shard.h) and the kernels' 16-bit gradient entries
// (kernels::adamw_update and sum_squares over bf16 / fp16 words): the entries give bitwise what
// the fp32 entries give on the widened values (same arithmetic, same chunks, same order: any
// difference is a bug), at sizes {0, 1, odd, more than one AdamW block and one sum chunk} and
// thread counts 1 and 3; fold() is one rounding of (stored + part) computed in fp32; the shard
// counts exactly 2 bytes an element; an fp16 overflow is an inf that the sum of squares shows.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/memory.h"
#include "kernels/kernels.h"
#include "parallel/grad_shard.h"

namespace trident::parallel {
namespace {

std::vector<float> values(int64_t n, uint32_t seed, float scale) {
  std::vector<float> v(static_cast<std::size_t>(n));
  uint32_t s = seed * 2654435761u + 1;
  for (auto& x : v) {
    s = s * 1664525u + 1013904223u;
    x = scale * (static_cast<float>(s >> 8) / 16777216.0f - 0.5f);
  }
  return v;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(Grad16Kernels, AdamWAndSumSquaresAreBitwiseTheFp32EntriesOnWidenedValues) {
  for (kernels::Half h : {kernels::Half::kBf16, kernels::Half::kFp16}) {
    for (int threads : {1, 3}) {
      omp_set_num_threads(threads);
      for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{1037}, int64_t{(1 << 16) + 4099}}) {
        const std::vector<float> g = values(n, 7, 3.0f);
        std::vector<uint16_t> w(g.size());
        std::vector<float> wide(g.size());
        for (std::size_t i = 0; i < g.size(); ++i) {
          w[i] = kernels::round_half(h, g[i]);
          wide[i] = kernels::widen_half(h, w[i]);
        }
        std::vector<float> p1 = values(n, 1, 1.0f), m1 = values(n, 2, 0.1f), v1(g.size(), 0.01f);
        std::vector<float> p2 = p1, m2 = m1, v2 = v1;
        for (int64_t t = 1; t <= 3; ++t) {
          kernels::adamw_update(p1.data(), wide.data(), m1.data(), v1.data(), n, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, t, 0.5f);
          kernels::adamw_update(p2.data(), w.data(), h, m2.data(), v2.data(), n, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, t, 0.5f);
        }
        EXPECT_TRUE(same_bits(p1, p2) && same_bits(m1, m2) && same_bits(v1, v2)) << "n " << n << " threads " << threads;
        const double a = kernels::sum_squares(wide.data(), n), b = kernels::sum_squares(w.data(), h, n);
        EXPECT_EQ(std::memcmp(&a, &b, sizeof a), 0) << "n " << n << ": " << a << " vs " << b;
        if (n > 0) {
          EXPECT_NE(p1, values(n, 1, 1.0f)) << "the update moved nothing";
        }
      }
    }
  }
  omp_set_num_threads(2);
}

TEST(GradShard, FoldRoundsTheFp32SumOnceAndCountsTwoBytes) {
  for (GradDType d : {GradDType::kBf16, GradDType::kFp16}) {
    const kernels::Half h = half_of(d);
    MemoryTracker t;
    constexpr int64_t kN = 1001;
    {
      GradShard s(t, kN, d);
      EXPECT_EQ(t.current(MemCategory::kGradients), 2u * kN);
      const std::vector<float> r1 = values(kN, 3, 2.0f), r2 = values(kN, 4, 2.0f);
      s.fold(0, r1.data(), kN);
      s.fold(0, r2.data(), kN);
      std::vector<float> got(kN);
      s.read(0, kN, got.data());
      int differs_from_double_rounding = 0, differs_from_fp32 = 0;
      for (int64_t i = 0; i < kN; ++i) {
        // One rounding of each fold: round(round(r1) + r2), the sum taken in fp32.
        const float once = kernels::widen_half(h, kernels::round_half(h, kernels::widen_half(h, kernels::round_half(h, r1[i])) + r2[i]));
        EXPECT_EQ(got[i], once) << i;
        const float twice = kernels::widen_half(h, kernels::round_half(h, kernels::widen_half(h, kernels::round_half(h, r1[i])) +
                                                                              kernels::widen_half(h, kernels::round_half(h, r2[i]))));
        differs_from_double_rounding += twice != once;
        differs_from_fp32 += got[i] != r1[i] + r2[i];
      }
      EXPECT_GT(differs_from_double_rounding, 0) << "the test cannot tell one rounding from two";
      EXPECT_GT(differs_from_fp32, 0) << "nothing was rounded";
      // write() rounds once; sum_squares reads the stored words.
      s.write(10, 3, r1.data());
      s.read(10, 3, got.data());
      for (int i = 0; i < 3; ++i) EXPECT_EQ(got[static_cast<std::size_t>(i)], kernels::widen_half(h, kernels::round_half(h, r1[static_cast<std::size_t>(i)])));
      std::vector<float> all(kN);
      s.read(0, kN, all.data());
      EXPECT_EQ(s.sum_squares(0, kN), kernels::sum_squares(all.data(), kN));
      s.zero();
      EXPECT_EQ(s.sum_squares(0, kN), 0.0);
    }
    EXPECT_EQ(t.current(MemCategory::kGradients), 0u);
  }
}

TEST(GradShard, Fp16OverflowIsAnInfTheNormSees) {
  MemoryTracker t;
  GradShard s(t, 4, GradDType::kFp16);
  const std::vector<float> r{60000.0f, 1.0f, -2.0f, 0.5f};
  s.fold(0, r.data(), 4);
  EXPECT_TRUE(std::isfinite(s.sum_squares(0, 4)));
  s.fold(0, r.data(), 4);  // 120000 > 65504
  EXPECT_TRUE(std::isinf(s.sum_squares(0, 4)));
}

TEST(GradShard, Fp32IsThePlainSum) {
  MemoryTracker t;
  GradShard s(t, 3, GradDType::kFp32);
  EXPECT_EQ(t.current(MemCategory::kGradients), 12u);
  const std::vector<float> r1{0.1f, 0.2f, 0.3f}, r2{1e-9f, 3.0f, -0.3f};
  s.fold(0, r1.data(), 3);
  s.fold(0, r2.data(), 3);
  std::vector<float> got(3);
  s.read(0, 3, got.data());
  for (int i = 0; i < 3; ++i) EXPECT_EQ(got[static_cast<std::size_t>(i)], r1[static_cast<std::size_t>(i)] + r2[static_cast<std::size_t>(i)]);
}

}  // namespace
}  // namespace trident::parallel
