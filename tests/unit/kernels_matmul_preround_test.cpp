// The matmul engine's pre-rounded activation operands (kernels/matmul_engine.h ActOperand):
// for bf16 and fp16, every product (forward, forward_nt, and both backward products of each)
// given the operand as the engine's 16-bit words (MatmulEngine::round_operand) must be
// BITWISE the product given the fp32 values, since the fp32 entry points round them to the
// same bits. This is what lets nn/saved_operand.h store those activations in 16 bits without
// changing any loss, gradient or weight. The values include ties, fp16 subnormals, fp16
// overflow (> 65504 becomes inf, for both paths alike) and bf16 subnormals (flushed).
// Mutation tried by hand: the fp16 pre-rounded path widening its words as bf16 fails the fp16
// case (every product).
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "kernels/matmul_engine.h"

namespace trident::kernels {
namespace {

std::vector<float> values(int64_t n, std::mt19937& gen) {
  std::uniform_real_distribution<float> d(-2.0f, 2.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(gen);
  // Special classes at fixed places: a bf16 tie, an fp16 tie, an fp16 subnormal, beyond
  // fp16's range, an fp32 subnormal (bf16 flushes it).
  const float special[] = {1.0f + 0x1p-8f, 1.0f + 0x1p-11f, 3e-6f, 7e4f, 1e-39f, -0.0f};
  for (size_t i = 0; i < std::size(special) && i < v.size(); ++i) v[i * 7 % v.size()] = special[i];
  return v;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

class PreRounded : public ::testing::TestWithParam<Precision> {};

TEST_P(PreRounded, EveryProductIsBitwiseTheFp32OperandOne) {
  const Precision p = GetParam();
  std::mt19937 gen(7);
  for (const auto [N, C, OC] : {std::array<int64_t, 3>{5, 7, 3}, {64, 48, 80}, {33, 129, 17}}) {
    const std::vector<float> x = values(N * C, gen), w = values(C * OC, gen), b = values(OC, gen),
                             dy = values(N * OC, gen);
    std::vector<uint16_t> x16(x.size());
    MatmulEngine::round_operand(p, x16.data(), x.data(), N * C);
    const ActOperand pre(x16.data(), p);
    MatmulEngine e(p), e2(p);
    // forward (Conv1D layout, with bias) and forward_nt (nn.Linear layout: w as (OC, C)).
    std::vector<float> y1(static_cast<size_t>(N * OC)), y2(y1.size());
    e.forward(y1.data(), x.data(), w.data(), b.data(), N, C, OC);
    e2.forward(y2.data(), pre, w.data(), b.data(), N, C, OC);
    EXPECT_TRUE(same_bits(y1, y2)) << "forward " << N << "x" << C << "x" << OC;
    e.forward_nt(y1.data(), x.data(), w.data(), N, C, OC);
    e2.forward_nt(y2.data(), pre, w.data(), N, C, OC);
    EXPECT_TRUE(same_bits(y1, y2)) << "forward_nt";
    // backward: dinp and dweight (accumulated into a nonzero start), dbias.
    std::vector<float> dx1(x.size()), dx2(x.size()), dw1 = values(C * OC, gen), dw2 = dw1, db1(b.size(), 0.5f),
                       db2 = db1;
    e.backward(dx1.data(), dw1.data(), db1.data(), dy.data(), x.data(), w.data(), N, C, OC);
    e2.backward(dx2.data(), dw2.data(), db2.data(), dy.data(), pre, w.data(), N, C, OC);
    EXPECT_TRUE(same_bits(dx1, dx2)) << "backward dinp";
    EXPECT_TRUE(same_bits(dw1, dw2)) << "backward dweight";
    EXPECT_TRUE(same_bits(db1, db2)) << "backward dbias";
    e.backward_nt(dx1.data(), dw1.data(), dy.data(), x.data(), w.data(), N, C, OC);
    e2.backward_nt(dx2.data(), dw2.data(), dy.data(), pre, w.data(), N, C, OC);
    EXPECT_TRUE(same_bits(dx1, dx2)) << "backward_nt dinp";
    EXPECT_TRUE(same_bits(dw1, dw2)) << "backward_nt dweight";
    // The words widen to exactly the values the engine multiplies: rounding them again is
    // the identity (what the sequence-parallel gather relies on).
    std::vector<float> wide(x.size());
    MatmulEngine::widen_operand(p, wide.data(), x16.data(), N * C);
    std::vector<uint16_t> again(x16.size());
    MatmulEngine::round_operand(p, again.data(), wide.data(), N * C);
    EXPECT_EQ(again, x16);
  }
}

INSTANTIATE_TEST_SUITE_P(Bf16AndFp16, PreRounded, ::testing::Values(Precision::kBf16, Precision::kFp16),
                         [](const auto& info) { return std::string(precision_names()[static_cast<int>(info.param)]); });

TEST(PreRounded, AnOperandOfAnotherPrecisionIsRefused) {
  std::vector<float> x(4, 1.0f), w(4, 1.0f), y(4);
  std::vector<uint16_t> x16(4);
  MatmulEngine::round_operand(Precision::kBf16, x16.data(), x.data(), 4);
  MatmulEngine fp16(Precision::kFp16), fp32(Precision::kFp32);
  EXPECT_THROW(fp16.forward_nt(y.data(), ActOperand(x16.data(), Precision::kBf16), w.data(), 2, 2, 2), std::exception);
  EXPECT_THROW(fp32.forward_nt(y.data(), ActOperand(x16.data(), Precision::kBf16), w.data(), 2, 2, 2), std::exception);
  EXPECT_THROW(MatmulEngine::round_operand(Precision::kFp32, x16.data(), x.data(), 4), std::exception);
}

}  // namespace
}  // namespace trident::kernels
