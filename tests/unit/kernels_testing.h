// Shared helpers for the kernel tests: seeded random inputs, fp32 <-> double copies,
// tolerance checks, and central finite differences over a double-precision reference.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <vector>

namespace trident::kernels::testing {

inline std::vector<float> random_floats(int64_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(gen);
  return v;
}

inline std::vector<double> to_double(const std::vector<float>& v) {
  return std::vector<double>(v.begin(), v.end());
}

// Expects |actual[i] - expected[i]| <= atol + rtol * |expected[i]| for every i, and reports
// the worst element.
inline void expect_close(const std::vector<float>& actual, const std::vector<double>& expected,
                         double rtol, double atol, const char* what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  double worst = 0.0;
  size_t worst_i = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double err = std::abs(static_cast<double>(actual[i]) - expected[i]);
    const double excess = err - (atol + rtol * std::abs(expected[i]));
    if (excess > worst || std::isnan(err)) {
      worst = std::isnan(err) ? INFINITY : excess;
      worst_i = i;
    }
  }
  EXPECT_LE(worst, 0.0) << what << ": element " << worst_i << " is " << actual[worst_i]
                        << ", expected " << expected[worst_i] << " (rtol " << rtol
                        << ", atol " << atol << ")";
}

inline double max_abs(const std::vector<double>& v) {
  double m = 0.0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

// d objective / d x[i] by central differences in double, for every i (stride 1) or every
// stride-th element (the rest are left 0 and must be skipped by the caller). With h = 1e-4 on
// O(1) inputs the truncation error is ~h^2 = 1e-8 and the rounding error ~1e-16 / h = 1e-12,
// both far below the fp32 errors being tested.
inline std::vector<double> numeric_grad(std::vector<double> x,
                                        const std::function<double(const std::vector<double>&)>& objective,
                                        int64_t stride = 1, double h = 1e-4) {
  std::vector<double> g(x.size(), 0.0);
  for (size_t i = 0; i < x.size(); i += static_cast<size_t>(stride)) {
    const double saved = x[i];
    x[i] = saved + h;
    const double up = objective(x);
    x[i] = saved - h;
    const double down = objective(x);
    x[i] = saved;
    g[i] = (up - down) / (2.0 * h);
  }
  return g;
}

// Keeps every stride-th element (to compare against a strided numeric_grad).
template <class T>
std::vector<T> every(const std::vector<T>& v, int64_t stride) {
  std::vector<T> out;
  for (size_t i = 0; i < v.size(); i += static_cast<size_t>(stride)) out.push_back(v[i]);
  return out;
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

}  // namespace trident::kernels::testing
