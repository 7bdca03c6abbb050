// The model's matmul engine (kernels/matmul_engine.h). fp32: bitwise the kernels::matmul_*
// functions. bf16: all four products of a linear layer and of the head, forward and backward,
// against an fp64 reference, two ways:
//   * on the bf16-rounded operands: bf16 x bf16 products are exact in fp32 (8 + 8 significant
//     bits), so the only error is fp32 accumulation, |c - ref| <= (K + 2) u sum|a b| (+ the
//     accumulated-into value), u = 2^-24: the deterministic worst case of a K-term fp32 sum
//     (the + 2 covers the seeded bias / accumulate-into C and vdpbf16ps's pairwise adds);
//   * on the unrounded fp32 operands: round to nearest even leaves each operand within a
//     relative 2^-8 (8 significant bits), so each product within (1 + 2^-8)^2 - 1 < 2^-7 + 2^-15,
//     and the sum within (2^-7 + 2^-15 + (K + 2) u) sum|a b|. It must also differ from that
//     reference by more than the fp32 accumulation bound somewhere: the operands were rounded.
// Mutation tried by hand: the bf16 dweight product overwriting (beta 0) instead of accumulating
// fails "backward dweight" (0.60 off against a bound of 2.3e-5).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "kernels/bf16.h"
#include "kernels/fp16.h"
#include "kernels/kernels.h"
#include "kernels/matmul_engine.h"

namespace trident::kernels {
namespace {

constexpr double kU = 0x1p-24;

std::vector<float> random_vec(int64_t n, std::mt19937& gen) {
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(gen);
  return v;
}

std::vector<float> rounded(const std::vector<float>& v) {
  std::vector<float> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = bf16_to_float(float_to_bf16(v[i]));
  return r;
}

// One output element: c0 + sum_k a(k) b(k), with the sum of |terms| for the bound.
using Term = std::function<double(int64_t)>;
struct Ref {
  double value = 0, abs = 0;
};
Ref reference(int64_t K, double c0, const Term& a, const Term& b) {
  Ref r{c0, std::fabs(c0)};
  for (int64_t k = 0; k < K; ++k) {
    r.value += a(k) * b(k);
    r.abs += std::fabs(a(k) * b(k));
  }
  return r;
}

// Checks got (M x Ncols) against references on the rounded and on the unrounded operands.
// ref(i, j, rounded) gives the reference of element (i, j).
void check(const char* what, const std::vector<float>& got, int64_t M, int64_t Ncols, int64_t K,
           const std::function<Ref(int64_t, int64_t, bool)>& ref) {
  const double accumulation = (K + 2) * kU;
  const double rounding = 0x1p-7 + 0x1p-15 + accumulation;
  bool differs = false;
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < Ncols; ++j) {
      const double g = got[static_cast<size_t>(i * Ncols + j)];
      const Ref r16 = ref(i, j, true), r32 = ref(i, j, false);
      ASSERT_LE(std::fabs(g - r16.value), accumulation * r16.abs) << what << " (" << i << ", " << j << ")";
      ASSERT_LE(std::fabs(g - r32.value), rounding * r32.abs) << what << " (" << i << ", " << j << ")";
      differs |= std::fabs(g - r32.value) > accumulation * r32.abs;
    }
  }
  EXPECT_TRUE(differs) << what << ": no element shows bf16 rounding of the operands";
}

struct Shapes {
  int64_t N = 37, C = 50, OC = 70;
};

TEST(MatmulEngine, Bf16LinearForwardBackwardMatchReference) {
  const Shapes s;
  const int64_t N = s.N, C = s.C, OC = s.OC;
  std::mt19937 gen(7);
  const auto inp = random_vec(N * C, gen), w = random_vec(C * OC, gen), bias = random_vec(OC, gen);
  const auto dout = random_vec(N * OC, gen), dw0 = random_vec(C * OC, gen), db0 = random_vec(OC, gen);
  const auto inp16 = rounded(inp), w16 = rounded(w), dout16 = rounded(dout);
  auto pick = [](const std::vector<float>& a, const std::vector<float>& b, bool r) -> const std::vector<float>& {
    return r ? a : b;
  };
  MatmulEngine e(Precision::kBf16);
  std::vector<float> out(static_cast<size_t>(N * OC));
  e.forward(out.data(), inp.data(), w.data(), bias.data(), N, C, OC);
  check("forward", out, N, OC, C, [&](int64_t n, int64_t o, bool r) {
    const auto &x = pick(inp16, inp, r), &y = pick(w16, w, r);
    return reference(C, bias[o], [&](int64_t c) { return x[n * C + c]; }, [&](int64_t c) { return y[c * OC + o]; });
  });
  std::vector<float> dinp(static_cast<size_t>(N * C)), dw = dw0, db = db0;
  e.backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(), N, C, OC);
  check("backward dinp", dinp, N, C, OC, [&](int64_t n, int64_t c, bool r) {
    const auto &d = pick(dout16, dout, r), &y = pick(w16, w, r);
    return reference(OC, 0.0, [&](int64_t o) { return d[n * OC + o]; }, [&](int64_t o) { return y[c * OC + o]; });
  });
  check("backward dweight", dw, C, OC, N, [&](int64_t c, int64_t o, bool r) {
    const auto &x = pick(inp16, inp, r), &d = pick(dout16, dout, r);
    return reference(N, dw0[c * OC + o], [&](int64_t n) { return x[n * C + c]; }, [&](int64_t n) { return d[n * OC + o]; });
  });
  // The bias gradient is a sum, not a product: fp32, bitwise the fp32 kernel's.
  std::vector<float> db32 = db0;
  matmul_backward(nullptr, nullptr, db32.data(), dout.data(), nullptr, nullptr, N, C, OC);
  EXPECT_EQ(db, db32);
}

TEST(MatmulEngine, Bf16HeadForwardBackwardMatchReference) {
  const int64_t N = 29, C = 48, V = 83;
  std::mt19937 gen(11);
  const auto inp = random_vec(N * C, gen), table = random_vec(V * C, gen), dout = random_vec(N * V, gen);
  const auto dt0 = random_vec(V * C, gen);
  const auto inp16 = rounded(inp), table16 = rounded(table), dout16 = rounded(dout);
  auto pick = [](const std::vector<float>& a, const std::vector<float>& b, bool r) -> const std::vector<float>& {
    return r ? a : b;
  };
  MatmulEngine e(Precision::kBf16);
  std::vector<float> out(static_cast<size_t>(N * V));
  e.forward_nt(out.data(), inp.data(), table.data(), N, C, V);
  check("forward_nt", out, N, V, C, [&](int64_t n, int64_t v, bool r) {
    const auto &x = pick(inp16, inp, r), &t = pick(table16, table, r);
    return reference(C, 0.0, [&](int64_t c) { return x[n * C + c]; }, [&](int64_t c) { return t[v * C + c]; });
  });
  std::vector<float> dinp(static_cast<size_t>(N * C)), dt = dt0;
  e.backward_nt(dinp.data(), dt.data(), dout.data(), inp.data(), table.data(), N, C, V);
  check("backward_nt dinp", dinp, N, C, V, [&](int64_t n, int64_t c, bool r) {
    const auto &d = pick(dout16, dout, r), &t = pick(table16, table, r);
    return reference(V, 0.0, [&](int64_t v) { return d[n * V + v]; }, [&](int64_t v) { return t[v * C + c]; });
  });
  check("backward_nt dtable", dt, V, C, N, [&](int64_t v, int64_t c, bool r) {
    const auto &d = pick(dout16, dout, r), &x = pick(inp16, inp, r);
    return reference(N, dt0[v * C + c], [&](int64_t n) { return d[n * V + v]; }, [&](int64_t n) { return x[n * C + c]; });
  });
}

TEST(MatmulEngine, Fp32IsBitwiseTheSgemmKernels) {
  const int64_t N = 33, C = 40, OC = 56;
  std::mt19937 gen(3);
  const auto inp = random_vec(N * C, gen), w = random_vec(C * OC, gen), bias = random_vec(OC, gen);
  const auto dout = random_vec(N * OC, gen);
  MatmulEngine e;
  EXPECT_EQ(e.precision(), Precision::kFp32);
  std::vector<float> a(static_cast<size_t>(N * OC)), b(a.size());
  e.forward(a.data(), inp.data(), w.data(), bias.data(), N, C, OC);
  matmul_forward(b.data(), inp.data(), w.data(), bias.data(), N, C, OC);
  EXPECT_EQ(a, b);
  std::vector<float> di(static_cast<size_t>(N * C)), di2(di.size()), dw(static_cast<size_t>(C * OC)), dw2(dw.size());
  std::vector<float> db(static_cast<size_t>(OC)), db2(db.size());
  e.backward(di.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(), N, C, OC);
  matmul_backward(di2.data(), dw2.data(), db2.data(), dout.data(), inp.data(), w.data(), N, C, OC);
  EXPECT_EQ(di, di2);
  EXPECT_EQ(dw, dw2);
  EXPECT_EQ(db, db2);
  // The head's form: table (OC, C) is w read as a [V = OC, C] table of the same floats.
  std::vector<float> o1(static_cast<size_t>(N * OC)), o2(o1.size());
  e.forward_nt(o1.data(), inp.data(), w.data(), N, C, OC);
  matmul_forward_nt(o2.data(), inp.data(), w.data(), N, C, OC);
  EXPECT_EQ(o1, o2);
  std::vector<float> t1(static_cast<size_t>(OC * C)), t2(t1.size());
  e.backward_nt(di.data(), t1.data(), dout.data(), inp.data(), w.data(), N, C, OC);
  matmul_backward_nt(di2.data(), t2.data(), dout.data(), inp.data(), w.data(), N, C, OC);
  EXPECT_EQ(di, di2);
  EXPECT_EQ(t1, t2);
}

// fp16: every product is the fp32 sgemm on the operands rounded to fp16 (fp16 x fp16 products are
// exact in fp32, so this is fp16-operand, fp32-accumulate numerics), bitwise; the bias and its
// gradient stay fp32; an operand beyond fp16's range becomes inf, which the loss scaler sees.
TEST(MatmulEngine, Fp16IsTheSgemmOnFp16RoundedOperands) {
  const int64_t N = 31, C = 44, OC = 52;
  std::mt19937 gen(13);
  const auto inp = random_vec(N * C, gen), w = random_vec(C * OC, gen), bias = random_vec(OC, gen);
  const auto dout = random_vec(N * OC, gen);
  auto r16 = [](const std::vector<float>& v) {
    std::vector<float> r(v.size());
    for (size_t i = 0; i < v.size(); ++i) r[i] = round_to_fp16(v[i]);
    return r;
  };
  const auto inp16 = r16(inp), w16 = r16(w), dout16 = r16(dout);
  MatmulEngine e(Precision::kFp16);
  std::vector<float> a(static_cast<size_t>(N * OC)), b(a.size()), unrounded(a.size());
  e.forward(a.data(), inp.data(), w.data(), bias.data(), N, C, OC);
  matmul_forward(b.data(), inp16.data(), w16.data(), bias.data(), N, C, OC);
  matmul_forward(unrounded.data(), inp.data(), w.data(), bias.data(), N, C, OC);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, unrounded) << "the operands were not rounded";
  std::vector<float> di(static_cast<size_t>(N * C)), di2(di.size()), dw(static_cast<size_t>(C * OC), 0.5f), dw2 = dw;
  std::vector<float> db(static_cast<size_t>(OC), 0.25f), db2 = db;
  e.backward(di.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(), N, C, OC);
  matmul_backward(di2.data(), dw2.data(), nullptr, dout16.data(), inp16.data(), w16.data(), N, C, OC);
  matmul_backward(nullptr, nullptr, db2.data(), dout.data(), nullptr, nullptr, N, C, OC);
  EXPECT_EQ(di, di2);
  EXPECT_EQ(dw, dw2);
  EXPECT_EQ(db, db2);
  std::vector<float> o1(static_cast<size_t>(N * OC)), o2(o1.size());
  e.forward_nt(o1.data(), inp.data(), w.data(), N, C, OC);
  matmul_forward_nt(o2.data(), inp16.data(), w16.data(), N, C, OC);
  EXPECT_EQ(o1, o2);
  std::vector<float> t1(static_cast<size_t>(OC * C), 0.5f), t2 = t1;
  e.backward_nt(di.data(), t1.data(), dout.data(), inp.data(), w.data(), N, C, OC);
  matmul_backward_nt(di2.data(), t2.data(), dout16.data(), inp16.data(), w16.data(), N, C, OC);
  EXPECT_EQ(di, di2);
  EXPECT_EQ(t1, t2);
  // Overflow: a gradient beyond 65504 reaches the products as inf.
  auto big = dout;
  big[5] = 70000.0f;
  e.backward(di.data(), dw.data(), nullptr, big.data(), inp.data(), w.data(), N, C, OC);
  EXPECT_TRUE(std::isinf(di[0]) || std::isnan(di[0]));
}

}  // namespace
}  // namespace trident::kernels
