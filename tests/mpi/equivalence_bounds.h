// The comparison of a parallel run's loss, grad-norm and weight curves with the single
// process's, and its fp32 bounds (derived in the header comments of dp_equivalence_test.cpp and
// tp_engine_equivalence_test.cpp; u = 2^-24, only summation order differs):
//   loss after k steps:     k u sqrt(V / tokens) relative
//   grad norm after k steps: k eta relative, eta = u sqrt(V)
//   weights:                sum over steps of lr eta (|g| / sqrt(n)) / eps absolute (AdamW's step
//                           moves an element by lr |dg| / eps at most; n = the model's elements).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace trident::test {

struct RunCurves {
  std::vector<double> losses, norms;                  // per step
  std::map<std::string, std::vector<float>> weights;  // world rank 0 only
};

struct EquivalenceBounds {
  double vocab = 0, tokens = 0, lr = 0, eps = 0;
  static constexpr double kU = 1.0 / (1 << 24);  // fp32 unit roundoff

  double eta() const { return kU * std::sqrt(vocab); }
  double loss(int k) const { return k * kU * std::sqrt(vocab / tokens); }  // k = 1: the first loss
  double norm(int k) const { return k * eta(); }
  double weights(const RunCurves& ref) const {  // from the reference run's own grad norms
    int64_t n = 0;
    for (const auto& [name, w] : ref.weights) n += static_cast<int64_t>(w.size());
    double b = 0.0;
    for (double g : ref.norms) b += lr * eta() * (g / std::sqrt(static_cast<double>(n))) / eps;
    return b;
  }
};

// Expects every step's loss and grad norm within the bounds; returns the largest fraction of
// its bound that a loss and a grad norm used, for the test's printout.
inline std::pair<double, double> expect_curves_match(const RunCurves& got, const RunCurves& want,
                                                     const EquivalenceBounds& b, const std::string& what) {
  EXPECT_EQ(got.losses.size(), want.losses.size()) << what;
  double loss_dev = 0.0, norm_dev = 0.0;
  for (std::size_t s = 0; s < std::min(got.losses.size(), want.losses.size()); ++s) {
    const int k = static_cast<int>(s) + 1;
    EXPECT_NEAR(got.losses[s], want.losses[s], b.loss(k) * std::fabs(want.losses[s])) << what << " step " << k;
    EXPECT_NEAR(got.norms[s], want.norms[s], b.norm(k) * std::fabs(want.norms[s])) << what << " step " << k;
    loss_dev = std::max(loss_dev, std::fabs(got.losses[s] - want.losses[s]) / std::fabs(want.losses[s]) / b.loss(k));
    norm_dev = std::max(norm_dev, std::fabs(got.norms[s] - want.norms[s]) / std::fabs(want.norms[s]) / b.norm(k));
  }
  return {loss_dev, norm_dev};
}

}  // namespace trident::test
