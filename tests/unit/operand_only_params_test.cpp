// ParamDecl::operand_only (nn/param_decl.h): a parameter so declared is read only as a matmul
// operand, so under --precision bf16, with the model's bf16 weight copy registered
// (Model::begin_weight_copy), no kernel reads its fp32 values. Checked by poisoning them: after
// the copy is made every fp32 value of every operand-only parameter is set to NaN, and a forward
// and backward must give bitwise the loss and every gradient of the unpoisoned model (a NaN read
// anywhere would reach the loss or a gradient). This is what would let ZeRO-1/2 keep those
// parameters' fp32 master as a shard only (docs/memory.md, "Not yet"). GPT-2 (tied embedding),
// Llama (untied LM head), Mixtral (router, experts; a dense first layer with a shared expert).
// The declarations themselves: operand-only parameters are exactly the 2-D matrices that are
// neither an embedding, nor the fp32 router, nor a LoRA adapter.
// Mutation tried by hand: declaring GPT-2's LayerNorm gains and biases operand-only (the norms read
// them as values) fails both tests for gpt2.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "core/memory.h"
#include "nn/bf16_weights.h"
#include "nn/model.h"

namespace trident {
namespace {

constexpr int64_t kB = 2, kT = 16;

nn::ModelConfig config_named(const std::string& name) {
  if (name == "llama-tiny-untied") {
    nn::ModelConfig c = nn::model_preset("llama-tiny");
    c.tie_word_embeddings = false;
    return c;
  }
  if (name != "mixtral-tiny-dense-shared") return nn::model_preset(name);
  nn::ModelConfig c = nn::model_preset("mixtral-tiny");
  c.first_k_dense = 1, c.n_shared_experts = 1;
  return c;
}

struct Result {
  std::vector<float> grads;
  double loss = 0;
  int poisoned = 0;  // parameters poisoned
};

Result run(const std::string& name, bool poison) {
  const nn::ModelConfig cfg = config_named(name);
  MemoryTracker tracker;
  nn::Model model(cfg);
  model.set_precision(kernels::Precision::kBf16);
  model.allocate(tracker);
  nn::ParameterSet& ps = model.params();
  ps.initialize(13);
  ps.zero_grads();
  model.begin_weight_copy(nn::WeightRounding{});
  Result r;
  if (poison) {
    for (int id = 0; id < ps.size(); ++id) {
      if (!ps.info(id).operand_only) continue;
      std::fill_n(ps.data(id), ps.info(id).numel, std::numeric_limits<float>::quiet_NaN());
      ++r.poisoned;
    }
  }
  const int64_t N = kB * kT;
  std::vector<int32_t> ids, targets;
  for (int64_t i = 0; i < N; ++i) {
    ids.push_back(static_cast<int32_t>((i * 7 + 3) % cfg.vocab_size));
    targets.push_back(static_cast<int32_t>((i * 11 + 5) % cfg.vocab_size));
  }
  nn::ModelActivations acts = model.make_activations(tracker, kB, kT);
  r.loss = model.forward_backward(acts, ids.data(), targets.data(), kB, kT, 1.0f / N);
  model.end_weight_copy();
  r.grads.assign(ps.grads().data(), ps.grads().data() + ps.total_numel());
  return r;
}

class OperandOnly : public ::testing::TestWithParam<std::string> {};

TEST_P(OperandOnly, PoisonedFp32ValuesAreNeverRead) {
  const Result clean = run(GetParam(), false), poisoned = run(GetParam(), true);
  ASSERT_GT(poisoned.poisoned, 0);
  ASSERT_TRUE(std::isfinite(clean.loss));
  EXPECT_EQ(std::memcmp(&clean.loss, &poisoned.loss, sizeof(double)), 0) << clean.loss << " vs " << poisoned.loss;
  ASSERT_EQ(clean.grads.size(), poisoned.grads.size());
  EXPECT_EQ(std::memcmp(clean.grads.data(), poisoned.grads.data(), clean.grads.size() * sizeof(float)), 0)
      << "a gradient differs: some kernel read an operand-only parameter's fp32 values";
}

TEST_P(OperandOnly, DeclaredForTheLayerMatricesOnly) {
  const nn::ModelConfig cfg = config_named(GetParam());
  MemoryTracker tracker;
  nn::Model model(cfg);
  model.allocate(tracker);
  const nn::ParameterSet& ps = model.params();
  for (const nn::ParamInfo& p : ps.infos()) {
    const bool router = p.name.find("block_sparse_moe.gate.weight") != std::string::npos;
    const bool matrix = p.logical_shape.size() == 2 && p.role != nn::ParamRole::kTokenEmbedding &&
                        p.role != nn::ParamRole::kPositionEmbedding && !router;
    EXPECT_EQ(p.operand_only, matrix) << p.name;
  }
}

INSTANTIATE_TEST_SUITE_P(Families, OperandOnly,
                         ::testing::Values("tiny", "llama-tiny", "llama-tiny-untied", "mixtral-tiny",
                                           "mixtral-tiny-dense-shared"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (char& c : s) c = (c == '-') ? '_' : c;
                           return s;
                         });

}  // namespace
}  // namespace trident
