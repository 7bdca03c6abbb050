// Tests of adamw_update (against a double-precision reference of the AdamW formula over 10
// steps) and of sum_squares (double accumulation, independent of the thread count).
#include <omp.h>

#include "kernels/kernels.h"
#include "kernels_testing.h"

namespace trident::kernels {
namespace {
using testing::random_floats;

TEST(AdamW, TenStepsMatchDoubleReference) {
  const int64_t n = 1037;  // not a multiple of any vector width or block
  const float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, scale = 0.5f;
  auto p = random_floats(n, 1);
  std::vector<float> m(static_cast<size_t>(n), 0.0f), v(static_cast<size_t>(n), 0.0f);
  std::vector<double> pd = testing::to_double(p), md(static_cast<size_t>(n), 0.0), vd(static_cast<size_t>(n), 0.0);
  for (int64_t t = 1; t <= 10; ++t) {
    const auto g = random_floats(n, 100 + static_cast<uint32_t>(t));
    adamw_update(p.data(), g.data(), m.data(), v.data(), n, lr, b1, b2, eps, wd, t, scale);
    // Hyperparameters as the decimals a user writes (what the kernel reproduces).
    const double B1 = 0.9, B2 = 0.95, LR = 1e-2, WD = 0.1, EPS = 1e-8;
    for (size_t i = 0; i < pd.size(); ++i) {
      const double gi = static_cast<double>(g[i]) * 0.5;
      md[i] = B1 * md[i] + (1 - B1) * gi;
      vd[i] = B2 * vd[i] + (1 - B2) * gi * gi;
      const double mhat = md[i] / (1 - std::pow(B1, t));
      const double vhat = vd[i] / (1 - std::pow(B2, t));
      pd[i] -= LR * (mhat / (std::sqrt(vhat) + EPS) + WD * pd[i]);
    }
  }
  // Each step moves p by <= lr (Adam's update is bounded by ~1 per unit lr) with fp32
  // rounding ~1e-7 relative per operation; over 10 steps the drift stays < 1e-6 absolute
  // for |p| <= 1. m and v are ~1e-7 relative.
  testing::expect_close(p, pd, 1e-6, 1e-6, "param");
  testing::expect_close(m, md, 1e-5, 1e-8, "m");
  testing::expect_close(v, vd, 1e-5, 1e-9, "v");
}

TEST(AdamW, ZeroGradientOnlyDecays) {
  std::vector<float> p = {1.0f, -2.0f}, g = {0.0f, 0.0f}, m = {0.0f, 0.0f}, v = {0.0f, 0.0f};
  adamw_update(p.data(), g.data(), m.data(), v.data(), 2, 0.1f, 0.9f, 0.999f, 1e-8f, 0.5f, 1, 1.0f);
  EXPECT_FLOAT_EQ(p[0], 0.95f);
  EXPECT_FLOAT_EQ(p[1], -1.9f);
}

TEST(SumSquares, MatchesDoubleAndIsThreadCountIndependent) {
  const int64_t n = 300001;  // several chunks, last partial
  const auto x = random_floats(n, 2);
  double expected = 0.0;
  for (float f : x) expected += static_cast<double>(f) * f;
  const int before = omp_get_max_threads();
  omp_set_num_threads(1);
  const double one = sum_squares(x.data(), n);
  omp_set_num_threads(2);
  const double two = sum_squares(x.data(), n);
  omp_set_num_threads(before);
  EXPECT_EQ(one, two);
  EXPECT_NEAR(one, expected, 1e-12 * expected);  // double accumulation: ~n * 1e-16 relative
  EXPECT_EQ(sum_squares(x.data(), 0), 0.0);
}

}  // namespace
}  // namespace trident::kernels
