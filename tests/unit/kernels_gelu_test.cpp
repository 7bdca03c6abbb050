// Tests of the tanh-approximated GELU: forward against the textbook formula in double,
// backward against central finite differences, in-place use (dinp aliasing dout).
#include "kernels/kernels.h"
#include "kernels_testing.h"

namespace trident::kernels {
namespace {
using testing::random_floats;

double ref_gelu(double x) {
  const double k = std::sqrt(2.0 / M_PI);
  return 0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x)));
}

TEST(Gelu, ForwardMatchesTanhFormula) {
  // Wide range, including the saturated tails where exp over/underflows, plus exact zeros.
  auto x = random_floats(1003, 1, -12.0f, 12.0f);
  x.push_back(0.0f);
  x.push_back(-0.0f);
  x.push_back(1e-8f);
  x.push_back(-30.0f);
  x.push_back(30.0f);
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<float> out(x.size());
  gelu_forward(out.data(), x.data(), n);
  std::vector<double> expected(x.size());
  for (size_t i = 0; i < x.size(); ++i) expected[i] = ref_gelu(x[i]);
  // A handful of fp32 roundings plus a ~2 ulp exp: rtol 1e-6, atol 1e-7 (tiny outputs).
  testing::expect_close(out, expected, 1e-6, 1e-7, "gelu");
}

TEST(Gelu, BackwardMatchesFiniteDifferencesInPlace) {
  const auto x = random_floats(517, 2, -6.0f, 6.0f);
  const auto dout = random_floats(517, 3);
  const int64_t n = static_cast<int64_t>(x.size());
  auto d = dout;
  gelu_backward(d.data(), x.data(), d.data(), n);  // dinp aliases dout
  std::vector<double> expected(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double h = 1e-5;
    expected[i] = (ref_gelu(x[i] + h) - ref_gelu(x[i] - h)) / (2 * h) * dout[i];
  }
  // gelu' is O(1) (max ~1.13); a few fp32 roundings in s, s(1 - s), du: rtol 1e-5, atol 1e-6
  // (where s(1 - s) is small the cancellation in 1 - s costs absolute, not relative, error).
  testing::expect_close(d, expected, 1e-5, 1e-6, "dgelu");
}

}  // namespace
}  // namespace trident::kernels
