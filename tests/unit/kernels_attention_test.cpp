// Tests of causal self-attention: forward (out and the saved probabilities) against a
// double-precision reference, backward against central finite differences of sum(out * R),
// across odd sizes, T = 1, NH = 1, and T beyond the kernel's 64-row blocks.
#include <omp.h>

#include "kernels/kernels.h"
#include "kernels_testing.h"

namespace trident::kernels {
namespace {
using testing::random_floats;
using testing::to_double;

// out (B, T, C) from qkv (B, T, 3C); att (B, NH, T, T) if given.
std::vector<double> ref_attention(const std::vector<double>& qkv, int64_t B, int64_t T, int64_t C,
                                  int64_t NH, std::vector<double>* att = nullptr) {
  const int64_t HS = C / NH;
  const double scale = 1.0 / std::sqrt(static_cast<double>(HS));
  std::vector<double> out(static_cast<size_t>(B * T * C), 0.0);
  std::vector<double> p(static_cast<size_t>(T));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < NH; ++h)
      for (int64_t t = 0; t < T; ++t) {
        const double* q = &qkv[(b * T + t) * 3 * C + h * HS];
        double maxv = -INFINITY;
        for (int64_t j = 0; j <= t; ++j) {
          const double* k = &qkv[(b * T + j) * 3 * C + C + h * HS];
          double s = 0.0;
          for (int64_t i = 0; i < HS; ++i) s += q[i] * k[i];
          p[j] = s * scale;
          maxv = std::max(maxv, p[j]);
        }
        double sum = 0.0;
        for (int64_t j = 0; j <= t; ++j) sum += (p[j] = std::exp(p[j] - maxv));
        for (int64_t j = 0; j < T; ++j) {
          const double a = j <= t ? p[j] / sum : 0.0;
          if (att) (*att)[((b * NH + h) * T + t) * T + j] = a;
          if (j > t) continue;
          const double* v = &qkv[(b * T + j) * 3 * C + 2 * C + h * HS];
          for (int64_t i = 0; i < HS; ++i) out[(b * T + t) * C + h * HS + i] += a * v[i];
        }
      }
  return out;
}

struct Sizes {
  int64_t B, T, C, NH;
};
class AttentionTest : public ::testing::TestWithParam<Sizes> {};

TEST_P(AttentionTest, ForwardAndBackward) {
  const auto [B, T, C, NH] = GetParam();
  // q, k in [-2, 2] so the softmax is far from uniform.
  const auto qkv = random_floats(B * T * 3 * C, 1, -2.0f, 2.0f);
  const auto R = random_floats(B * T * C, 2);
  const auto qd = to_double(qkv), Rd = to_double(R);

  std::vector<float> out(static_cast<size_t>(B * T * C), 7.0f);
  std::vector<float> att(static_cast<size_t>(B * NH * T * T), 7.0f);  // garbage: all overwritten
  attention_forward(out.data(), att.data(), qkv.data(), B, T, C, NH);
  std::vector<double> aref(att.size());
  const auto oref = ref_attention(qd, B, T, C, NH, &aref);
  // Scores are HS-term dot products of values <= 2 (error ~sqrt(HS) * 4 * 6e-8), softmax
  // adds a few ulp, out averages values <= 1: rtol/atol 1e-5 is ~10x the expected error.
  testing::expect_close(out, oref, 1e-5, 1e-5, "out");
  testing::expect_close(att, aref, 1e-5, 1e-6, "att");
  for (int64_t bh = 0; bh < B * NH; ++bh)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = t + 1; j < T; ++j)
        ASSERT_EQ(att[static_cast<size_t>((bh * T + t) * T + j)], 0.0f) << "above the diagonal";

  std::vector<float> dqkv(qkv.size(), 7.0f);  // overwritten
  attention_backward(dqkv.data(), R.data(), qkv.data(), att.data(), B, T, C, NH);
  // Finite differences on every element for small cases, a stride for large ones (each
  // objective evaluation is a full double forward).
  const int64_t stride = qkv.size() > 1000 ? 5 : 1;
  const auto g = testing::numeric_grad(qd, [&](const std::vector<double>& x) {
    return testing::dot(ref_attention(x, B, T, C, NH), Rd);
  }, stride);
  // Gradients are O(1) sums over <= T keys of products of O(1) terms; fp32 error ~1e-6 *
  // sqrt(T) relative: atol 5e-5, rtol 1e-4.
  testing::expect_close(testing::every(dqkv, stride), testing::every(g, stride), 1e-4, 5e-5, "dqkv");
}

INSTANTIATE_TEST_SUITE_P(Sizes, AttentionTest,
                         ::testing::Values(Sizes{2, 5, 6, 2},    // tiny, two heads
                                           Sizes{1, 1, 4, 1},    // T = 1, NH = 1
                                           Sizes{3, 7, 15, 3},   // odd head size 5
                                           Sizes{1, 70, 6, 2},   // T crosses a 64-row block
                                           Sizes{1, 130, 4, 1}   // three blocks, last partial
                                           ));

TEST(Attention, SameResultWithOneAndTwoThreads) {
  // With B * NH >= threads heads run in parallel with single-threaded BLAS; otherwise BLAS
  // threads. Both must give the same numbers (each head's arithmetic is identical).
  const int64_t B = 2, T = 33, C = 12, NH = 3;
  const auto qkv = random_floats(B * T * 3 * C, 3, -2.0f, 2.0f);
  const auto dout = random_floats(B * T * C, 4);
  std::vector<float> out1(static_cast<size_t>(B * T * C)), out2 = out1;
  std::vector<float> att1(static_cast<size_t>(B * NH * T * T)), att2 = att1;
  std::vector<float> d1(qkv.size()), d2(qkv.size());
  const int before = num_threads();
  set_num_threads(1);
  attention_forward(out1.data(), att1.data(), qkv.data(), B, T, C, NH);
  attention_backward(d1.data(), dout.data(), qkv.data(), att1.data(), B, T, C, NH);
  set_num_threads(2);
  attention_forward(out2.data(), att2.data(), qkv.data(), B, T, C, NH);
  attention_backward(d2.data(), dout.data(), qkv.data(), att2.data(), B, T, C, NH);
  set_num_threads(before);
  testing::expect_close(out2, to_double(out1), 1e-6, 1e-7, "out");
  testing::expect_close(d2, to_double(d1), 1e-6, 1e-7, "dqkv");
}

}  // namespace
}  // namespace trident::kernels
