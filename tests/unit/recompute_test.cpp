// Activation recomputation (nn/recompute.h) on one process, both families: selective and full
// give bitwise the gradients and losses of none over two micro-batches in flight at once (both
// forwards before either backward, as a pipeline runs them, so a working set the micro-batches
// share is overwritten between a forward and its backward), and the activation bytes the
// tracker counts are exactly the formulas of docs/memory.md for each mode.
// Multi-rank layouts (tp, sequence parallelism, pipelines, ZeRO-3) are checked end to end by
// tests/cli/recompute_test.py.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/memory.h"
#include "nn/model.h"

namespace trident {
namespace {

constexpr int kMicro = 2;
constexpr int64_t kB = 2, kT = 16;

struct Result {
  std::vector<float> grads;
  std::vector<double> losses;
  std::size_t activation_bytes = 0;
  int64_t per_micro_bytes = 0, once_bytes = 0;
};

// A preset, or "mixtral-tiny-dense-shared": mixtral-tiny with layer 0 dense and one shared
// expert (layers of two shapes: full recompute keeps a working set per kind).
nn::ModelConfig config_named(const std::string& name) {
  if (name != "mixtral-tiny-dense-shared") return nn::model_preset(name);
  nn::ModelConfig c = nn::model_preset("mixtral-tiny");
  c.first_k_dense = 1, c.n_shared_experts = 1;
  return c;
}

Result run(const std::string& preset, nn::Recompute mode) {
  const nn::ModelConfig cfg = config_named(preset);
  MemoryTracker tracker;
  nn::Model model(cfg);
  model.set_recompute(mode);
  model.allocate(tracker);
  model.params().initialize(7);
  model.params().zero_grads();
  const int64_t N = kB * kT;
  std::vector<nn::ModelActivations> acts;
  std::vector<std::vector<int32_t>> ids(kMicro), targets(kMicro);
  for (int m = 0; m < kMicro; ++m) {
    acts.push_back(model.make_activations(tracker, kB, kT));
    for (int64_t i = 0; i < N; ++i) {
      ids[m].push_back(static_cast<int32_t>((i * 7 + 3 + 5 * m) % cfg.vocab_size));
      targets[m].push_back(static_cast<int32_t>((i * 11 + 5 + m) % cfg.vocab_size));
    }
  }
  for (int m = 0; m < kMicro; ++m) {
    model.embed_forward(acts[m], ids[m].data(), kB, kT);
    model.blocks_forward(acts[m], kB, kT);
  }
  Result r;
  for (int m = 0; m < kMicro; ++m) {
    r.losses.push_back(model.head_forward_backward(acts[m], targets[m].data(), kB, kT, 1.0f / (kMicro * N)));
    model.blocks_backward(acts[m], kB, kT);
    model.embed_backward(acts[m], kB, kT);
  }
  const nn::ParameterSet& ps = model.params();
  r.grads.assign(ps.grads().data(), ps.grads().data() + ps.total_numel());
  r.activation_bytes = tracker.current(MemCategory::kActivations);
  r.per_micro_bytes = model.activation_bytes(kB, kT);
  r.once_bytes = model.recompute_bytes(kB, kT);
  return r;
}

class Recompute : public ::testing::TestWithParam<std::string> {};

TEST_P(Recompute, BitwiseAsNone) {
  const Result none = run(GetParam(), nn::Recompute::kNone);
  for (nn::Recompute mode : {nn::Recompute::kSelective, nn::Recompute::kFull}) {
    const Result got = run(GetParam(), mode);
    ASSERT_EQ(got.grads.size(), none.grads.size());
    // Bitwise: the reruns repeat the same kernels on the same inputs and weights.
    EXPECT_EQ(std::memcmp(got.grads.data(), none.grads.data(), got.grads.size() * sizeof(float)), 0)
        << nn::recompute_name(mode) << ": gradients differ from --recompute none";
    EXPECT_EQ(got.losses, none.losses) << nn::recompute_name(mode);
  }
}

TEST_P(Recompute, TrackerMatchesFormula) {
  for (nn::Recompute mode : {nn::Recompute::kNone, nn::Recompute::kSelective, nn::Recompute::kFull}) {
    const Result r = run(GetParam(), mode);
    // Every micro-batch's own activations plus the model's one recompute working set.
    EXPECT_EQ(r.activation_bytes, static_cast<std::size_t>(kMicro * r.per_micro_bytes + r.once_bytes))
        << nn::recompute_name(mode);
  }
}

INSTANTIATE_TEST_SUITE_P(Families, Recompute, ::testing::Values("tiny", "llama-tiny", "mixtral-tiny-dense-shared"));

// docs/memory.md's formulas for GPT-2, written out independently of the allocation code
// (N = B*T; one stage with every layer and the head):
//   none:      L*(N*(16C+4) + B*NH*T^2) + head
//   selective: L*N*(16C+4) + head                   + B*NH*T^2 once
//   full:      L*N*C + head                         + N*(15C+4) + B*NH*T^2 + N*C once
//   head: 2*N*C + 3*N + N*Vp (the last layer's output counted here, so the L layer inputs
//   are each layer's N*C of the 16C)
TEST(RecomputeFormula, Gpt2AsDocumented) {
  const nn::ModelConfig c = nn::model_preset("gpt2");
  const int64_t B = 4, T = 256, N = B * T, C = c.n_embd, NH = c.n_head, L = c.n_layer;
  const int64_t head = 2 * N * C + 3 * N + N * c.padded_vocab(), core = B * NH * T * T;
  nn::Model m(c);
  EXPECT_EQ(m.activation_bytes(B, T), 4 * (L * (N * (16 * C + 4) + core) + head));
  EXPECT_EQ(m.recompute_bytes(B, T), 4 * (0));
  m.set_recompute(nn::Recompute::kSelective);
  EXPECT_EQ(m.activation_bytes(B, T), 4 * (L * N * (16 * C + 4) + head));
  EXPECT_EQ(m.recompute_bytes(B, T), 4 * (core));
  m.set_recompute(nn::Recompute::kFull);
  EXPECT_EQ(m.activation_bytes(B, T), 4 * (L * N * C + head));
  EXPECT_EQ(m.recompute_bytes(B, T), 4 * (N * (15 * C + 4) + core + N * C));
}

TEST(RecomputeFormula, ActivationsOfAnotherModeAreRejected) {
  MemoryTracker tracker;
  nn::Model m(nn::model_preset("tiny"));
  m.allocate(tracker);
  nn::ModelActivations acts = m.make_activations(tracker, 1, 8);
  m.set_recompute(nn::Recompute::kFull);
  EXPECT_THROW(m.blocks_forward(acts, 1, 8), Error);
}

}  // namespace
}  // namespace trident
