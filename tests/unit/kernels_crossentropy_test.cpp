// Tests of the fused softmax cross-entropy: losses against a double reference, the in-place
// gradient against central finite differences of dloss * sum(losses), padding columns,
// ignored targets (< 0), and stability with large logits.
#include "kernels/kernels.h"
#include "kernels_testing.h"

namespace trident::kernels {
namespace {
using testing::random_floats;

// losses (N) from logits (N, Vp), first V columns real.
std::vector<double> ref_losses(const std::vector<double>& logits, const std::vector<int32_t>& targets,
                               int64_t N, int64_t V, int64_t Vp) {
  std::vector<double> losses(static_cast<size_t>(N), 0.0);
  for (int64_t n = 0; n < N; ++n) {
    if (targets[n] < 0) continue;
    double maxv = -INFINITY;
    for (int64_t i = 0; i < V; ++i) maxv = std::max(maxv, logits[n * Vp + i]);
    double sum = 0.0;
    for (int64_t i = 0; i < V; ++i) sum += std::exp(logits[n * Vp + i] - maxv);
    losses[n] = std::log(sum) + maxv - logits[n * Vp + targets[n]];
  }
  return losses;
}

void check(int64_t N, int64_t V, int64_t Vp, float offset, float dloss) {
  SCOPED_TRACE(::testing::Message() << "N=" << N << " V=" << V << " Vp=" << Vp << " offset=" << offset);
  auto logits = random_floats(N * Vp, 1, offset - 4.0f, offset + 4.0f);
  std::vector<int32_t> targets(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; ++n) targets[n] = static_cast<int32_t>((n * 7 + 3) % V);
  if (N > 2) targets[1] = -1;  // ignored position
  if (N > 3) targets[3] = -100;
  const auto ld = testing::to_double(logits);

  std::vector<float> losses(static_cast<size_t>(N), 9.0f);
  auto grad = logits;
  crossentropy_softmax_forward_backward(losses.data(), grad.data(), targets.data(), N, V, Vp, dloss);

  // Loss = log(sum exp) + max - target logit, O(log V) ~ 5; summing V terms in double and
  // a ~2 ulp exp give ~1e-7 relative. When offset is large, the fp32 inputs are exact in
  // double so no extra error arises: rtol 1e-6, atol 1e-6.
  testing::expect_close(losses, ref_losses(ld, targets, N, V, Vp), 1e-6, 1e-6, "losses");
  const auto g = testing::numeric_grad(ld, [&](const std::vector<double>& x) {
    double total = 0.0;
    for (double l : ref_losses(x, targets, N, V, Vp)) total += l;
    return total * dloss;
  });
  // Softmax entries are <= 1; fp32 error ~1e-7 relative plus the exp's ~2 ulp; the finite
  // difference of log-sum-exp around a large offset loses ~|offset| * 1e-16 / h: atol 1e-6.
  testing::expect_close(grad, g, 1e-5, 1e-6 * std::abs(dloss) + 1e-7, "dlogits");
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = V; i < Vp; ++i) ASSERT_EQ(grad[static_cast<size_t>(n * Vp + i)], 0.0f) << "padding";
  for (int64_t n = 0; n < N; ++n) {
    if (targets[n] >= 0) continue;
    EXPECT_EQ(losses[n], 0.0f);
    for (int64_t i = 0; i < Vp; ++i) ASSERT_EQ(grad[static_cast<size_t>(n * Vp + i)], 0.0f) << "ignored row";
  }
}

TEST(CrossEntropy, SmallOddSizes) { check(5, 7, 7, 0.0f, 1.0f); }
TEST(CrossEntropy, PaddedVocabulary) { check(6, 37, 48, 0.0f, 0.25f); }
TEST(CrossEntropy, SingleRow) { check(1, 3, 8, 0.0f, 1.0f); }
TEST(CrossEntropy, LargeLogitsAreStable) { check(4, 29, 32, 1000.0f, 1.0f); }
TEST(CrossEntropy, WideRow) { check(3, 1000, 1003, 0.0f, 1.0f / 3.0f); }

TEST(CrossEntropy, RejectsTargetOutsideVocabulary) {
  std::vector<float> logits(8, 0.0f), losses(1);
  std::vector<int32_t> targets = {5};
  EXPECT_THROW(crossentropy_softmax_forward_backward(losses.data(), logits.data(), targets.data(),
                                                     1, 5, 8, 1.0f),
               std::exception);
}

}  // namespace
}  // namespace trident::kernels
