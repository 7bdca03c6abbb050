// The bf16 weight copy (nn/bf16_weights.h) and the matmul engine's pre-rounded weight operand
// (kernels/matmul_engine.h, add_weight_copy):
//   * nearest even: a model's forward + backward reading the copy is bitwise the one that
//     rounds every weight per product (losses, every gradient), and the copy is what is read
//     (a copy deliberately made of other values changes the result);
//   * stochastic rounding of one value x: the result is always one of x's two bf16 neighbours
//     (lo <= x <= hi), a value bf16 holds exactly never changes, and over n independent draws
//     the mean is within 5 standard deviations of x: each draw is lo + (hi - lo) Bernoulli(p)
//     with p = (x - lo) / (hi - lo) (the dropped 16 bits over 2^16, exactly), so the mean's
//     standard deviation is (hi - lo) sqrt(p (1 - p) / n) (5 sigma: a false failure once in
//     ~3.5 million runs); the draws are also not all alike (the bits do vary);
//   * layout independence: a tp-sharded copy of a tensor (any chunking, padding rows included)
//     holds, for every local element, the bits the whole logical tensor's copy holds at its
//     logical index; another step or seed gives other bits.
// Mutations tried by hand: keying the stochastic bits by the local instead of the logical index
// fails ShardedCopyHoldsTheLogicalBits; `u += random & 0xFFFF` replaced by `u += 0x8000` (plain
// rounding) fails the mean / "bits vary" checks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <string>
#include <random>
#include <vector>

#include "core/memory.h"
#include "core/rng.h"
#include "kernels/bf16.h"
#include "kernels/matmul_engine.h"
#include "nn/bf16_weights.h"
#include "nn/model.h"

namespace trident::nn {
namespace {

using kernels::bf16_t;
using kernels::bf16_to_float;

nn::ModelConfig tiny_shape() {
  nn::ModelConfig c;
  c.n_layer = 2, c.n_head = 2, c.n_embd = 32, c.n_positions = 32, c.vocab_size = 200;
  return c;
}

struct Pass {
  double loss;
  std::vector<float> grads;
};

Pass forward_backward(nn::Model& m, MemoryTracker& t, bool copy, const WeightRounding& r = {}) {
  const int64_t B = 2, T = 16, N = B * T;
  nn::ModelActivations acts = m.make_activations(t, B, T);
  std::vector<int32_t> ids(N), targets(N);
  for (int64_t i = 0; i < N; ++i) {
    ids[static_cast<std::size_t>(i)] = static_cast<int32_t>((i * 7 + 3) % 200);
    targets[static_cast<std::size_t>(i)] = static_cast<int32_t>((i * 11 + 5) % 200);
  }
  m.params().zero_grads();
  if (copy) m.begin_weight_copy(r);
  const double loss = m.forward_backward(acts, ids.data(), targets.data(), B, T, 1.0f / N);
  if (copy) m.end_weight_copy();
  const nn::ParameterSet& ps = m.params();
  return {loss, std::vector<float>(ps.grads().data(), ps.grads().data() + ps.total_numel())};
}

TEST(Bf16WeightCopy, NearestEvenCopyIsBitwisePerProductRounding) {
  MemoryTracker t;
  nn::Model m(tiny_shape());
  m.allocate(t);
  m.params().initialize(3);
  m.set_precision(kernels::Precision::kBf16);
  const Pass per_call = forward_backward(m, t, false);
  EXPECT_EQ(m.matmul().weight_copy_hits(), 0);
  const std::size_t before = t.current(MemCategory::kParameters);
  const Pass copied = forward_backward(m, t, true);
  // Every linear layer's forward and input-gradient product and the head's two read it.
  EXPECT_GE(m.matmul().weight_copy_hits(), 2 * (4 * 2 + 1));
  EXPECT_EQ(std::memcmp(&per_call.loss, &copied.loss, sizeof(double)), 0) << per_call.loss << " " << copied.loss;
  ASSERT_EQ(per_call.grads.size(), copied.grads.size());
  EXPECT_EQ(std::memcmp(per_call.grads.data(), copied.grads.data(), per_call.grads.size() * sizeof(float)), 0);
  // The copy: 2 bytes per flat element, in the parameters' category, kept for the next step.
  EXPECT_EQ(t.current(MemCategory::kParameters) - before,
            2 * static_cast<std::size_t>(m.params().total_numel()));
}

TEST(Bf16WeightCopy, ProductsReadTheCopy) {
  MemoryTracker t;
  nn::Model m(tiny_shape());
  m.allocate(t);
  m.params().initialize(3);
  m.set_precision(kernels::Precision::kBf16);
  const Pass reference = forward_backward(m, t, false);
  // A copy of other values (the weights scaled by 2, exact in bf16) must change the products.
  nn::ParameterSet& ps = m.params();
  std::vector<float> doubled(ps.values().data(), ps.values().data() + ps.total_numel());
  for (float& x : doubled) x *= 2.0f;
  std::vector<bf16_t> copy(doubled.size());
  kernels::convert_to_bf16(copy.data(), doubled.data(), static_cast<int64_t>(copy.size()));
  kernels::MatmulEngine& mm = m.matmul();
  mm.add_weight_copy(ps.values().data(), copy.data(), ps.total_numel());
  const Pass other = forward_backward(m, t, false);
  mm.remove_weight_copy(ps.values().data());
  EXPECT_NE(reference.loss, other.loss);
  // Removed: per-call rounding again, bitwise the reference.
  const Pass again = forward_backward(m, t, false);
  EXPECT_EQ(reference.loss, again.loss);
  EXPECT_EQ(reference.grads, again.grads);
}

TEST(Bf16WeightCopy, Fp32EngineIgnoresCopies) {
  kernels::MatmulEngine mm(kernels::Precision::kFp32);
  const std::vector<float> w(6, 1.0f), x(2, 1.0f);
  const std::vector<bf16_t> copy(6, kernels::float_to_bf16(5.0f));
  mm.add_weight_copy(w.data(), copy.data(), 6);
  std::vector<float> out(3);
  mm.forward(out.data(), x.data(), w.data(), nullptr, 1, 2, 3);
  EXPECT_EQ(out, std::vector<float>(3, 2.0f));
  EXPECT_EQ(mm.weight_copy_hits(), 0);
}

// A one-parameter set holding `values` as a (rows, cols) tensor, sharded by rows into `chunks`.
struct OneParam {
  ParameterSet ps;
  MemoryTracker t;
  OneParam(int64_t rows, int64_t cols, std::vector<Chunk> chunks) {
    ps.begin_group("g");
    ParamInfo p;
    p.name = "h.0.mlp.c_fc.weight";
    p.logical_shape = {rows, cols};
    p.shard.dim = 0;
    p.shard.chunks = std::move(chunks);
    ps.add(p);
    ps.allocate(t);
  }
};

TEST(Bf16WeightCopy, ShardedCopyHoldsTheLogicalBits) {
  const int64_t rows = 37, cols = 13;
  std::mt19937 gen(5);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> logical(static_cast<std::size_t>(rows * cols));
  for (float& x : logical) x = d(gen);
  const WeightRounding r{true, 1337, 4};
  OneParam whole(rows, cols, {});
  std::copy(logical.begin(), logical.end(), whole.ps.values().data());
  std::vector<bf16_t> want(logical.size());
  round_weights(whole.ps, 0, whole.ps.total_numel(), whole.ps.values().data(), want.data(), r);
  // Two tp-like slices of uneven rows, and one with a padding chunk (logical_begin < 0).
  for (const std::vector<Chunk>& chunks : {std::vector<Chunk>{{20, 17}}, std::vector<Chunk>{{3, 9}, {30, 7}},
                                           std::vector<Chunk>{{0, 5}, {-1, 3}}}) {
    OneParam part(rows, cols, chunks);
    const ParamInfo& info = part.ps.info(0);
    scatter_logical_to_local(info, logical.data(), part.ps.values().data());
    std::vector<bf16_t> got(static_cast<std::size_t>(info.numel));
    // In two pieces, as ZeRO-3's per-group copies split a flat range.
    const int64_t mid = info.numel / 3;
    round_weights(part.ps, 0, mid, part.ps.values().data(), got.data(), r);
    round_weights(part.ps, mid, info.numel, part.ps.values().data() + mid, got.data() + mid, r);
    for_each_local_element(info, [&](int64_t l, int64_t g) {
      if (g < 0) {
        EXPECT_EQ(got[static_cast<std::size_t>(l)], 0) << l;
      } else {
        EXPECT_EQ(got[static_cast<std::size_t>(l)], want[static_cast<std::size_t>(g)]) << "local " << l << " logical " << g;
      }
    });
  }
  // Nearest even is convert_to_bf16's bits.
  std::vector<bf16_t> rne(logical.size()), conv(logical.size());
  round_weights(whole.ps, 0, whole.ps.total_numel(), whole.ps.values().data(), rne.data(), {});
  kernels::convert_to_bf16(conv.data(), logical.data(), static_cast<int64_t>(conv.size()));
  EXPECT_EQ(rne, conv);
  // Another step or seed draws other bits (some element rounds the other way).
  for (const WeightRounding& o : {WeightRounding{true, 1337, 5}, WeightRounding{true, 1338, 4}}) {
    std::vector<bf16_t> other(logical.size());
    round_weights(whole.ps, 0, whole.ps.total_numel(), whole.ps.values().data(), other.data(), o);
    EXPECT_NE(other, want);
  }
}

// The process's resident set now (VmRSS), in bytes.
std::size_t resident_bytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return static_cast<std::size_t>(std::stoull(line.substr(6))) * 1024;
  }
  return 0;
}

// reset() gives the copy's memory back to the kernel, not only to the tracker. ZeRO-3 fills and
// resets one copy per layer group at every gather; when reset() cleared a std::vector with
// `buf_ = {}` (which keeps its capacity), every group's copy stayed resident, untracked: 2 bytes
// per layer parameter beyond the formula, 2.7 GiB on the 1.5B offload demo (docs/memory.md).
// Checked on the kernel's count, around a 32 MiB copy.
TEST(Bf16WeightCopy, ResetReturnsTheMemoryToTheKernel) {
  constexpr int64_t kRows = 4096, kCols = 4096;  // 16 Mi elements: a 32 MiB copy
  OneParam one(kRows, kCols, {});
  one.ps.initialize(3);  // the values resident before the first measurement
  kernels::MatmulEngine mm(kernels::Precision::kBf16);
  constexpr std::size_t kCopy = kRows * kCols * sizeof(bf16_t), kSlack = 4u << 20;
  for (int round = 0; round < 2; ++round) {  // a refill after a reset too
    Bf16WeightCopy copy;
    const std::size_t before = resident_bytes(), tracked = one.t.current(MemCategory::kParameters);
    copy.fill(one.t, mm, one.ps, 0, kRows * kCols, one.ps.values().data(), {});
    const std::size_t filled = resident_bytes();
    EXPECT_EQ(one.t.current(MemCategory::kParameters) - tracked, kCopy);
    EXPECT_GE(filled + kSlack, before + kCopy) << "the copy is not resident after its fill";
    copy.reset();
    EXPECT_EQ(one.t.current(MemCategory::kParameters), tracked);
    EXPECT_LE(resident_bytes(), filled - kCopy + kSlack) << "reset() kept the copy's pages (round " << round << ")";
  }
}

TEST(StochasticRounding, NeighboursUnbiasedExactValuesKept) {
  const uint64_t stream = fnv1a64("h.0.attn.c_attn.weight");
  std::mt19937 gen(11);
  std::uniform_real_distribution<float> d(-3.0f, 3.0f);
  const int draws = 20000;
  for (int trial = 0; trial < 40; ++trial) {
    float x = d(gen);
    if (trial == 0) x = 1.0f + 0x1p-9f;  // exactly between two neighbours: p = 1/2
    if (trial == 1) x = -0x1p-100f * 1.3f;  // tiny, still normal
    const bf16_t down = static_cast<bf16_t>([&] {
      uint32_t u;
      std::memcpy(&u, &x, sizeof u);
      return u >> 16;
    }());  // truncation: the neighbour toward zero
    const float lo_mag = bf16_to_float(down);
    const float hi_mag = bf16_to_float(static_cast<bf16_t>(down + 1));  // the one away from zero
    double sum = 0.0;
    bool varied = false;
    bf16_t first = 0;
    for (int i = 0; i < draws; ++i) {
      const bf16_t h = kernels::float_to_bf16_stochastic(x, stochastic_rounding_bits(7, 3, stream, static_cast<uint64_t>(i)));
      const float y = bf16_to_float(h);
      ASSERT_TRUE(y == lo_mag || y == hi_mag) << x << " -> " << y;
      if (i == 0) first = h;
      varied = varied || h != first;
      sum += y;
    }
    const double p = (static_cast<double>(x) - lo_mag) / (static_cast<double>(hi_mag) - lo_mag);
    const double sigma = std::fabs(static_cast<double>(hi_mag) - lo_mag) * std::sqrt(p * (1 - p) / draws);
    EXPECT_NEAR(sum / draws, x, 5 * sigma + 1e-30) << "x " << x << " p " << p;
    if (std::min(p, 1 - p) * draws > 20) {  // else all alike is likely
      EXPECT_TRUE(varied) << x;
    }
  }
  // Values bf16 holds exactly (and zero, inf) never move, whatever the bits.
  for (float x : {0.0f, -0.0f, 1.0f, -2.5f, 0x1p-120f, 3.140625f, INFINITY, -INFINITY}) {
    for (uint32_t bits : {0u, 1u, 0x7FFFu, 0x8000u, 0xFFFFu}) {
      EXPECT_EQ(bf16_to_float(kernels::float_to_bf16_stochastic(x, bits)), x) << x << " bits " << bits;
    }
  }
  // The bits: 16 of them, and not a function of the index alone.
  EXPECT_LE(stochastic_rounding_bits(1, 2, stream, 9), 0xFFFFu);
  int same = 0;
  for (uint64_t i = 0; i < 64; ++i) same += stochastic_rounding_bits(1, 2, stream, i) == stochastic_rounding_bits(1, 3, stream, i);
  EXPECT_LT(same, 4);
}

}  // namespace
}  // namespace trident::nn
