// The pieces ZeRO-1/2's sharded fp32 master (parallel/zero_master.h) is built from, one process:
//   * FloatBuffer's sparse form (core/memory.h): only the backed ranges are counted and hold
//     memory (zeroed, writable); an element outside them is address space only and reading it
//     faults (a death test), and ParameterSet::keep_flat_values keeps the backed parameters'
//     values at their addresses;
//   * AdamW::step with ValuesAt: values taken from two buffers, cut anywhere (inside a decay
//     range too), give bitwise one pass over one buffer, moments included;
//   * the matmul engine's 16-bit weight copies under fp16 (kernels/matmul_engine.h): a model's
//     forward + backward reading an fp16 copy (round_weights with precision fp16) is bitwise the
//     per-product rounding, and the copy is what is read (one made of other values changes it).
// Mutations tried by hand: see the report of the commit that added this file.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "core/memory.h"
#include "kernels/matmul_engine.h"
#include "nn/bf16_weights.h"
#include "nn/model.h"
#include "nn/parameters.h"
#include "optim/adamw.h"

namespace trident {
namespace {

TEST(SparseFloatBuffer, CountsAndBacksOnlyItsRanges) {
  MemoryTracker t;
  const std::vector<std::pair<int64_t, int64_t>> backed{{3, 10}, {5000, 5001}, {9000, 12000}};
  {
    FloatBuffer b(t, MemCategory::kParameters, 20000, backed);
    EXPECT_EQ(t.current(MemCategory::kParameters), (7 + 1 + 3000) * sizeof(float));
    EXPECT_EQ(b.tracked_bytes(), (7 + 1 + 3000) * sizeof(float));
    for (const auto& [lo, hi] : backed) {
      for (int64_t i = lo; i < hi; ++i) {
        EXPECT_EQ(b[static_cast<std::size_t>(i)], 0.0f);
        b[static_cast<std::size_t>(i)] = static_cast<float>(i);
      }
    }
    b.zero();
    EXPECT_EQ(b[9500], 0.0f);
    // The middle of an unbacked range is not memory: reading it is a fault, not a stale value.
    const float* key = b.data() + 15000;
    EXPECT_DEATH({ volatile float x = *key; (void)x; }, "");
    FloatBuffer moved = std::move(b);
    EXPECT_EQ(t.current(MemCategory::kParameters), (7 + 1 + 3000) * sizeof(float));
  }
  EXPECT_EQ(t.current(MemCategory::kParameters), 0u);
}

TEST(SparseFloatBuffer, KeepFlatValuesKeepsTheBackedParameters) {
  MemoryTracker t;
  nn::ParameterSet ps;
  ps.begin_group("g");
  const int64_t sizes[] = {300, 5000, 17, 4000};
  for (int i = 0; i < 4; ++i) {
    nn::ParamInfo p;
    p.name = fmt::format("p{}", i);
    p.logical_shape = {sizes[i]};
    ps.add(p);
  }
  ps.allocate(t, nn::FlatBuffers{true, false});
  for (int64_t i = 0; i < ps.total_numel(); ++i) ps.values()[static_cast<std::size_t>(i)] = static_cast<float>(i);
  const float* key1 = ps.data(1);
  // Keep p0 and p2 (p1 and p3 become keys).
  ps.keep_flat_values({{ps.info(0).offset, ps.info(0).offset + 300}, {ps.info(2).offset, ps.info(2).offset + 17}});
  EXPECT_EQ(t.current(MemCategory::kParameters), (300 + 17) * sizeof(float));
  for (int id : {0, 2}) {
    EXPECT_EQ(ps.data(id), ps.values().data() + ps.info(id).offset);
    for (int64_t i = 0; i < ps.info(id).numel; ++i) EXPECT_EQ(ps.data(id)[i], static_cast<float>(ps.info(id).offset + i));
  }
  EXPECT_EQ(ps.data(1), ps.values().data() + ps.info(1).offset);  // at its flat address: the key
  (void)key1;
}

nn::ParameterSet decay_params(MemoryTracker& t) {
  nn::ParameterSet ps;
  ps.begin_group("g");
  const int64_t sizes[] = {700, 64, 900, 33};
  for (int i = 0; i < 4; ++i) {
    nn::ParamInfo p;
    p.name = fmt::format("p{}", i);
    p.logical_shape = {sizes[i]};
    p.weight_decay = i != 1;
    ps.add(p);
  }
  ps.allocate(t);
  return ps;
}

TEST(AdamWValuesAt, TwoBuffersCutAnywhereAreBitwiseOnePass) {
  MemoryTracker t;
  nn::ParameterSet ps = decay_params(t);
  const int64_t n = ps.total_numel(), begin = 50, end = n - 20;
  optim::AdamW one(ps, t, {}, begin, end), two(ps, t, {}, begin, end);
  std::vector<float> w(static_cast<std::size_t>(n)), g(w.size());
  for (int64_t i = 0; i < n; ++i) w[static_cast<std::size_t>(i)] = 0.01f * static_cast<float>(i % 97) - 0.4f;
  // `two` keeps flat [cut_lo, cut_hi) in another buffer (inside p0's decay range and p2's).
  const int64_t cut_lo = 333, cut_hi = 1200;
  std::vector<float> flat = w, other(w.begin() + cut_lo, w.begin() + cut_hi);
  const optim::AdamW::ValuesAt at = [&](int64_t f, int64_t k, const optim::MomentStore::Block&) -> std::pair<float*, int64_t> {
    if (f >= cut_lo && f < cut_hi) return {other.data() + (f - cut_lo), std::min(k, cut_hi - f)};
    return {flat.data() + f, f < cut_lo ? std::min(k, cut_lo - f) : k};
  };
  for (int s = 0; s < 4; ++s) {
    for (int64_t i = 0; i < n; ++i) g[static_cast<std::size_t>(i)] = 0.001f * static_cast<float>((i * 31 + s * 7) % 53) - 0.02f;
    one.step(w.data(), g.data(), 1e-2f, 0.9f, optim::AdamW::At::kFlat, optim::AdamW::At::kFlat);
    two.step(at, g.data(), 1e-2f, 0.9f, optim::AdamW::At::kFlat);
  }
  std::copy(other.begin(), other.end(), flat.begin() + cut_lo);
  EXPECT_EQ(std::memcmp(w.data(), flat.data(), w.size() * sizeof(float)), 0);
  for (int kind = 0; kind < 2; ++kind) {
    std::vector<float> a(static_cast<std::size_t>(end - begin)), b(a.size());
    one.moments().read(kind, 0, end - begin, a.data());
    two.moments().read(kind, 0, end - begin, b.data());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << "kind " << kind;
  }
}

nn::ModelConfig tiny_shape() {
  nn::ModelConfig c;
  c.n_layer = 2, c.n_head = 2, c.n_embd = 32, c.n_positions = 32, c.vocab_size = 200;
  return c;
}

struct Pass {
  double loss;
  std::vector<float> grads;
};

Pass forward_backward(nn::Model& m, MemoryTracker& t) {
  const int64_t B = 2, T = 16, N = B * T;
  nn::ModelActivations acts = m.make_activations(t, B, T);
  std::vector<int32_t> ids(N), targets(N);
  for (int64_t i = 0; i < N; ++i) {
    ids[static_cast<std::size_t>(i)] = static_cast<int32_t>((i * 7 + 3) % 200);
    targets[static_cast<std::size_t>(i)] = static_cast<int32_t>((i * 11 + 5) % 200);
  }
  m.params().zero_grads();
  const double loss = m.forward_backward(acts, ids.data(), targets.data(), B, T, 1.0f / N);
  const nn::ParameterSet& ps = m.params();
  return {loss, std::vector<float>(ps.grads().data(), ps.grads().data() + ps.total_numel())};
}

TEST(Fp16WeightCopy, CopyIsBitwisePerProductRoundingAndIsRead) {
  MemoryTracker t;
  nn::Model m(tiny_shape());
  m.allocate(t);
  m.params().initialize(3);
  m.set_precision(kernels::Precision::kFp16);
  nn::ParameterSet& ps = m.params();
  const Pass per_call = forward_backward(m, t);
  nn::WeightRounding r;
  r.precision = kernels::Precision::kFp16;
  std::vector<uint16_t> copy(static_cast<std::size_t>(ps.total_numel()));
  nn::round_weights(ps, 0, ps.total_numel(), ps.values().data(), copy.data(), r);
  kernels::MatmulEngine& mm = m.matmul();
  mm.add_weight_copy(ps.values().data(), copy.data(), ps.total_numel());
  const Pass copied = forward_backward(m, t);
  EXPECT_GE(mm.weight_copy_hits(), 2 * (4 * 2 + 1));
  EXPECT_EQ(std::memcmp(&per_call.loss, &copied.loss, sizeof(double)), 0) << per_call.loss << " " << copied.loss;
  EXPECT_EQ(std::memcmp(per_call.grads.data(), copied.grads.data(), per_call.grads.size() * sizeof(float)), 0);
  // A copy of the weights doubled (exact in fp16) must change the products.
  std::vector<float> doubled(ps.values().data(), ps.values().data() + ps.total_numel());
  for (float& x : doubled) x *= 2.0f;
  nn::round_weights(ps, 0, ps.total_numel(), doubled.data(), copy.data(), r);
  const Pass other = forward_backward(m, t);
  mm.remove_weight_copy(ps.values().data());
  EXPECT_NE(per_call.loss, other.loss);
  const Pass again = forward_backward(m, t);
  EXPECT_EQ(per_call.grads, again.grads);
}

}  // namespace
}  // namespace trident
