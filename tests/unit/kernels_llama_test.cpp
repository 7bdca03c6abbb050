// Llama's kernels against double-precision references written from Hugging Face's
// LlamaForCausalLM (RMSNorm, rotate-half RoPE, SwiGLU, grouped-query attention with
// repeat_kv), and every backward against central finite differences of sum(out * R).
// Bounds: u = 2^-24; an fp32 reduction of length n is off by ~sqrt(n) u relative (random-walk
// rounding), an elementwise op by a few u; each bound below is that estimate with a factor
// of 4 of headroom, and the finite-difference error (~1e-8, kernels_testing.h) is far below.
#include <omp.h>

#include <cmath>

#include "kernels/kernels.h"
#include "kernels_testing.h"

namespace trident::kernels {
namespace {
using testing::random_floats;
using testing::to_double;
constexpr double kU = 1.0 / (1 << 24);

std::vector<double> ref_rmsnorm(const std::vector<double>& x, const std::vector<double>& w, int64_t N, int64_t C,
                                double eps) {
  std::vector<double> out(x.size());
  for (int64_t n = 0; n < N; ++n) {
    double ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += x[n * C + c] * x[n * C + c];
    const double r = 1.0 / std::sqrt(ss / static_cast<double>(C) + eps);
    for (int64_t c = 0; c < C; ++c) out[n * C + c] = w[c] * (x[n * C + c] * r);
  }
  return out;
}

TEST(RmsNorm, ForwardBackward) {
  const int64_t N = 7, C = 37;
  const float eps = 1e-6f;
  const auto x = random_floats(N * C, 1, -2.0f, 2.0f), w = random_floats(C, 2, 0.5f, 1.5f),
             R = random_floats(N * C, 3);
  std::vector<float> out(x.size(), 9.0f), rstd(N, 9.0f);
  rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, eps);
  const auto xd = to_double(x), wd = to_double(w), Rd = to_double(R);
  // A length-C sum of squares, a sqrt and two products: 4 (sqrt(C) + 3) u relative.
  const double rtol = 4 * (std::sqrt(static_cast<double>(C)) + 3) * kU;
  testing::expect_close(out, ref_rmsnorm(xd, wd, N, C, eps), rtol, 1e-7, "rmsnorm out");
  std::vector<float> dx(x.size(), 0.5f), dw(C, 0.25f);  // both accumulate
  rmsnorm_backward(dx.data(), dw.data(), R.data(), x.data(), w.data(), rstd.data(), N, C);
  auto objective = [&](const std::vector<double>& xx, const std::vector<double>& ww) {
    return testing::dot(ref_rmsnorm(xx, ww, N, C, eps), Rd);
  };
  auto gx = testing::numeric_grad(xd, [&](const std::vector<double>& v) { return objective(v, wd); });
  auto gw = testing::numeric_grad(wd, [&](const std::vector<double>& v) { return objective(xd, v); });
  for (double& g : gx) g += 0.5;
  for (double& g : gw) g += 0.25;
  // dx: two length-C reductions per row; dw: a length-N sum of O(1) terms.
  testing::expect_close(dx, gx, rtol, 4 * std::sqrt(static_cast<double>(C)) * kU * 4, "rmsnorm dx");
  testing::expect_close(dw, gw, rtol, 4 * std::sqrt(static_cast<double>(N)) * kU * 4, "rmsnorm dw");
}

// HF: inv_freq = theta^(-2i/d), emb = cat(freqs, freqs), x*cos + rotate_half(x)*sin with
// rotate_half(x) = cat(-x2, x1).
std::vector<double> ref_rope(const std::vector<double>& x, int64_t B, int64_t T, int64_t heads, int64_t HS,
                             int64_t stride, double theta, int64_t pos0) {
  std::vector<double> out = x;
  const int64_t half = HS / 2;
  for (int64_t n = 0; n < B * T; ++n)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t d = 0; d < HS; ++d) {
        const int64_t i = d % half;
        const double a = static_cast<double>(pos0 + n % T) * std::pow(theta, -2.0 * static_cast<double>(i) / HS);
        const double xd = x[n * stride + h * HS + d];
        const double rot = d < half ? -x[n * stride + h * HS + d + half] : x[n * stride + h * HS + d - half];
        out[n * stride + h * HS + d] = xd * std::cos(a) + rot * std::sin(a);
      }
  return out;
}

TEST(Rope, ForwardBackwardOnAStridedView) {
  // Three heads of 8 inside rows of 30 (as q inside a fused qkv row); columns 24..29 untouched.
  const int64_t B = 2, T = 5, heads = 3, HS = 8, stride = 30, pos0 = 3;
  const float theta = 500000.0f;  // Llama 3's rope_theta
  const auto x = random_floats(B * T * stride, 4), R = random_floats(B * T * stride, 5);
  std::vector<float> y = x;
  rope_forward(y.data(), B, T, heads, HS, stride, theta, pos0);
  const auto ref = ref_rope(to_double(x), B, T, heads, HS, stride, theta, pos0);
  // cos/sin correctly rounded (u each), two products and a sum: 4 * 4 u.
  testing::expect_close(y, ref, 16 * kU, 16 * kU, "rope out");
  std::vector<float> dx = R;
  rope_backward(dx.data(), B, T, heads, HS, stride, theta, pos0);
  const auto g = testing::numeric_grad(to_double(x), [&](const std::vector<double>& v) {
    return testing::dot(ref_rope(v, B, T, heads, HS, stride, theta, pos0), to_double(R));
  });
  testing::expect_close(dx, g, 16 * kU, 16 * kU, "rope dx");
  // Position 0 is the identity.
  std::vector<float> z = x;
  rope_forward(z.data(), 1, 1, heads, HS, stride, theta, 0);
  for (int64_t c = 0; c < stride; ++c) ASSERT_EQ(z[c], x[c]) << c;
}

TEST(SwiGlu, ForwardBackward) {
  const int64_t n = 1001;
  const auto g = random_floats(n, 6, -6.0f, 6.0f), u = random_floats(n, 7, -2.0f, 2.0f), R = random_floats(n, 8);
  std::vector<float> out(n);
  swiglu_forward(out.data(), g.data(), u.data(), n);
  auto silu = [](double v) { return v / (1.0 + std::exp(-v)); };
  std::vector<double> ref(n), dg(n), du(n);
  for (int64_t i = 0; i < n; ++i) {
    ref[i] = silu(g[i]) * u[i];
    const double s = 1.0 / (1.0 + std::exp(-static_cast<double>(g[i])));
    dg[i] = R[i] * u[i] * s * (1 + g[i] * (1 - s));  // the analytic derivative, checked below by differences
    du[i] = R[i] * silu(g[i]);
  }
  // exp_approx is within a few u (vec_math.h); a division and two products: 4 * 8 u.
  testing::expect_close(out, ref, 32 * kU, 1e-7, "swiglu out");
  std::vector<float> dgate(n), dup(n);
  swiglu_backward(dgate.data(), dup.data(), R.data(), g.data(), u.data(), n);
  testing::expect_close(dgate, dg, 32 * kU, 1e-7, "swiglu dgate");
  testing::expect_close(dup, du, 32 * kU, 1e-7, "swiglu dup");
  // The analytic derivative itself, against differences of silu(g) * u * R.
  std::vector<double> numeric(n);
  for (int64_t i = 0; i < n; ++i) {
    const double h = 1e-5;
    numeric[i] = (silu(g[i] + h) - silu(g[i] - h)) / (2 * h) * u[i] * R[i];
  }
  testing::expect_close(dgate, numeric, 32 * kU, 1e-7, "swiglu dgate vs differences");
}

// repeat_kv: query head h reads key/value head h / (NH / NKV).
std::vector<double> ref_gqa(const std::vector<double>& qkv, int64_t B, int64_t T, int64_t NH, int64_t NKV,
                            int64_t HS) {
  const int64_t RW = (NH + 2 * NKV) * HS, group = NH / NKV;
  std::vector<double> out(static_cast<size_t>(B * T * NH * HS), 0.0);
  std::vector<double> p(static_cast<size_t>(T));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < NH; ++h)
      for (int64_t t = 0; t < T; ++t) {
        const double* q = &qkv[(b * T + t) * RW + h * HS];
        double maxv = -INFINITY;
        for (int64_t j = 0; j <= t; ++j) {
          const double* k = &qkv[(b * T + j) * RW + NH * HS + (h / group) * HS];
          double s = 0;
          for (int64_t i = 0; i < HS; ++i) s += q[i] * k[i];
          p[j] = s / std::sqrt(static_cast<double>(HS));
          maxv = std::max(maxv, p[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j <= t; ++j) sum += (p[j] = std::exp(p[j] - maxv));
        for (int64_t j = 0; j <= t; ++j) {
          const double* v = &qkv[(b * T + j) * RW + (NH + NKV) * HS + (h / group) * HS];
          for (int64_t i = 0; i < HS; ++i) out[(b * T + t) * NH * HS + h * HS + i] += p[j] / sum * v[i];
        }
      }
  return out;
}

struct GqaSizes {
  int64_t B, T, NH, NKV, HS;
};
class GqaTest : public ::testing::TestWithParam<GqaSizes> {};

TEST_P(GqaTest, ForwardAndBackward) {
  const auto [B, T, NH, NKV, HS] = GetParam();
  const int64_t RW = (NH + 2 * NKV) * HS;
  const auto qkv = random_floats(B * T * RW, 9, -2.0f, 2.0f), R = random_floats(B * T * NH * HS, 10);
  std::vector<float> out(static_cast<size_t>(B * T * NH * HS)), att(static_cast<size_t>(B * NH * T * T));
  attention_gqa_forward(out.data(), att.data(), qkv.data(), B, T, NH, NKV, HS);
  // As the MHA test (kernels_attention_test.cpp): scores of HS terms <= 4, softmax, an
  // average of values <= 1.
  testing::expect_close(out, ref_gqa(to_double(qkv), B, T, NH, NKV, HS), 1e-5, 1e-5, "gqa out");
  std::vector<float> dqkv(qkv.size(), 7.0f);  // overwritten
  attention_gqa_backward(dqkv.data(), R.data(), qkv.data(), att.data(), B, T, NH, NKV, HS);
  const int64_t stride = qkv.size() > 1500 ? 7 : 1;
  const auto g = testing::numeric_grad(to_double(qkv), [&](const std::vector<double>& x) {
    return testing::dot(ref_gqa(x, B, T, NH, NKV, HS), to_double(R));
  }, stride);
  // A key/value gradient sums over group * T query rows: the MHA bound times sqrt(group).
  const double group_factor = std::sqrt(static_cast<double>(NH / NKV));
  testing::expect_close(testing::every(dqkv, stride), testing::every(g, stride), 1e-4 * group_factor,
                        5e-5 * group_factor, "gqa dqkv");
}

INSTANTIATE_TEST_SUITE_P(Sizes, GqaTest,
                         ::testing::Values(GqaSizes{2, 5, 4, 2, 3},    // two query heads per kv head
                                           GqaSizes{1, 6, 4, 1, 4},    // multi-query: one kv head
                                           GqaSizes{2, 4, 3, 3, 2},    // NKV == NH is MHA
                                           GqaSizes{1, 70, 4, 2, 2}    // T crosses a 64-row block
                                           ));

TEST(Gqa, MhaCaseEqualsAttentionForwardBitwise) {
  const int64_t B = 2, T = 9, NH = 3, HS = 4, C = NH * HS;
  const auto qkv = random_floats(B * T * 3 * C, 11, -2.0f, 2.0f), dout = random_floats(B * T * C, 12);
  std::vector<float> o1(static_cast<size_t>(B * T * C)), o2 = o1, a1(static_cast<size_t>(B * NH * T * T)), a2 = a1;
  attention_forward(o1.data(), a1.data(), qkv.data(), B, T, C, NH);
  attention_gqa_forward(o2.data(), a2.data(), qkv.data(), B, T, NH, NH, HS);
  EXPECT_EQ(o1, o2);
  EXPECT_EQ(a1, a2);
}

TEST(Gqa, BackwardSameWithOneAndTwoThreads) {
  // Parallel over (batch, kv head) with the group's query heads in order: deterministic.
  const int64_t B = 2, T = 17, NH = 4, NKV = 2, HS = 4, RW = (NH + 2 * NKV) * HS;
  const auto qkv = random_floats(B * T * RW, 13, -2.0f, 2.0f), dout = random_floats(B * T * NH * HS, 14);
  std::vector<float> out(static_cast<size_t>(B * T * NH * HS)), att(static_cast<size_t>(B * NH * T * T));
  attention_gqa_forward(out.data(), att.data(), qkv.data(), B, T, NH, NKV, HS);
  std::vector<float> d1(qkv.size()), d2(qkv.size());
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  attention_gqa_backward(d1.data(), dout.data(), qkv.data(), att.data(), B, T, NH, NKV, HS);
  omp_set_num_threads(2);
  attention_gqa_backward(d2.data(), dout.data(), qkv.data(), att.data(), B, T, NH, NKV, HS);
  omp_set_num_threads(saved);
  EXPECT_EQ(d1, d2);
}

}  // namespace
}  // namespace trident::kernels
