// DeepSeek-V3's layer mix in the Mixtral family (nn/mixtral_architecture.cpp): the first
// first_k_dense layers keep Llama's dense MLP, the MoE layers get n_shared_experts shared experts
// (one SwiGLU of S x I). Checks that everything derived from the declaration follows the layer:
// the parameter count, tensor list and count, FLOPs, activation floats against the tracker, the
// Hugging Face config round trip, expert-parallel locality of the shared experts, and the bad
// inputs. Gradients: nn_gpt_gradcheck_test (MixtralGradcheck.FirstKDense...), against PyTorch:
// tests/ref/llama_torch_reference_test.py moe_dense_shared.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/memory.h"
#include "nn/architecture.h"
#include "nn/model.h"
#include "nn/param_decl.h"

namespace trident::nn {
namespace {

ModelConfig dense_shared(int k = 1, int shared = 1) {
  ModelConfig c = model_preset("mixtral-tiny");  // 4 layers, 4 experts of width 48, top 2
  c.first_k_dense = k, c.n_shared_experts = shared;
  return c;
}

bool has(const std::vector<ParamDecl>& v, const std::string& name) {
  return std::any_of(v.begin(), v.end(), [&](const ParamDecl& d) { return d.name == name; });
}

TEST(MoeDenseShared, LayerDeclarationsFollowTheLayer) {
  const ModelConfig c = dense_shared(1, 2);
  const Architecture& a = architecture(c.family);
  const std::vector<ParamDecl> dense = a.layer_params(c, 0), moe = a.layer_params(c, 1);
  EXPECT_TRUE(has(dense, "model.layers.0.mlp.gate_proj.weight"));
  EXPECT_TRUE(has(dense, "model.layers.0.mlp.down_proj.weight"));
  EXPECT_FALSE(has(dense, "model.layers.0.block_sparse_moe.gate.weight"));
  EXPECT_TRUE(has(moe, "model.layers.1.block_sparse_moe.gate.weight"));
  EXPECT_FALSE(has(moe, "model.layers.1.mlp.gate_proj.weight"));
  for (const ParamDecl& d : moe) {
    if (d.name.find("shared_experts") == std::string::npos) continue;
    // A dense parameter: no expert index (replicated over ep, reduced over all of dp), split by tp.
    EXPECT_EQ(d.expert, -1) << d.name;
    EXPECT_EQ(d.split, TpSplit::kSplit) << d.name;
    const int64_t w = 2 * c.mlp_width();
    EXPECT_EQ(d.shape, d.name.ends_with("down_proj.weight") ? Shape({c.n_embd, w}) : Shape({w, c.n_embd})) << d.name;
  }
  EXPECT_TRUE(has(moe, "model.layers.1.block_sparse_moe.shared_experts.up_proj.weight"));
  // Every ep rank keeps them.
  const std::vector<ParamDecl> rank1 = local_experts(moe, 1, 2, c.n_experts);
  EXPECT_TRUE(has(rank1, "model.layers.1.block_sparse_moe.shared_experts.gate_proj.weight"));
  EXPECT_FALSE(has(rank1, "model.layers.1.block_sparse_moe.experts.0.w1.weight"));
  const std::vector<Architecture::LayerRun> runs = a.layer_runs(c);
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0].end, 1);
  EXPECT_EQ(runs[1].begin, 1);
  EXPECT_EQ(runs[1].end, c.n_layer);
}

TEST(MoeDenseShared, CountsAndFlopsDeriveFromEveryLayer) {
  const ModelConfig plain = model_preset("mixtral-tiny"), c = dense_shared(1, 2);
  const int64_t C = c.n_embd, I = c.mlp_width(), E = c.n_experts, K = c.n_experts_per_tok, S = 2;
  // Layer 0 trades the router and E experts for one dense MLP; layers 1-3 add S I-wide SwiGLUs.
  EXPECT_EQ(c.num_parameters() - plain.num_parameters(),
            3 * I * C - (E * C + E * 3 * I * C) + (c.n_layer - 1) * 3 * S * I * C);
  // The list and the count agree (the count multiplies runs, the list names every tensor).
  const std::vector<TensorSpec> specs = model_tensor_specs(c);
  EXPECT_EQ(static_cast<int64_t>(specs.size()), model_tensor_count(c));
  int64_t numel = 0;
  for (const TensorSpec& s : specs) {
    int64_t n = 1;
    for (int64_t d : s.shape) n *= d;
    numel += n;
  }
  EXPECT_EQ(numel, c.num_parameters());
  // Active matmul parameters: layer 0 the dense MLP, the others router + k experts + shared.
  const double active_extra = 3.0 * I * C - (E * C + K * 3.0 * I * C) + (c.n_layer - 1) * 3.0 * S * I * C;
  EXPECT_DOUBLE_EQ(training_flops_per_token(c, 32) - training_flops_per_token(plain, 32), 6.0 * active_extra);
  double sum = 0;
  for (int l = 0; l < c.n_layer; ++l) sum += layer_forward_flops(c, 2, 3, 16, l);
  EXPECT_DOUBLE_EQ(layers_forward_flops(c, 2, 3, 16, 0, c.n_layer), sum);
  EXPECT_LT(layer_forward_flops(c, 1, 1, 16, 0), layer_forward_flops(c, 1, 1, 16, 1));
}

TEST(MoeDenseShared, ActivationFloatsMatchTheTrackerPerStage) {
  const ModelConfig c = dense_shared(2, 1);
  const int64_t B = 2, T = 8;
  // A stage of dense layers only, one of both kinds, one of MoE layers only.
  for (const auto& [begin, end] : std::vector<std::pair<int, int>>{{0, 2}, {1, 3}, {2, 4}}) {
    MemoryTracker tracker;
    Model m(c, TpContext{}, StageSpec{begin, end, false, false});
    m.allocate(tracker);
    const std::size_t before = tracker.current(MemCategory::kActivations);
    ModelActivations acts = m.make_activations(tracker, B, T);
    EXPECT_EQ(tracker.current(MemCategory::kActivations) - before, static_cast<std::size_t>(m.activation_bytes(B, T)))
        << "layers [" << begin << ", " << end << ")";
  }
}

TEST(MoeDenseShared, HuggingFaceConfigRoundTrip) {
  const ModelConfig c = dense_shared(1, 2);
  const nlohmann::json j = model_config_to_hf_json(c);
  EXPECT_EQ(j.at("first_k_dense_replace"), 1);
  EXPECT_EQ(j.at("n_shared_experts"), 2);
  const ModelConfig back = model_config_from_hf_json(j, "config.json");
  EXPECT_EQ(back.first_k_dense, 1);
  EXPECT_EQ(back.n_shared_experts, 2);
  EXPECT_EQ(back.num_parameters(), c.num_parameters());
  EXPECT_EQ(model_config_to_hf_json(back), j);
  // A plain Mixtral writes neither key (Hugging Face's Mixtral has none); DeepSeek's null = none.
  const nlohmann::json plain = model_config_to_hf_json(model_preset("mixtral-tiny"));
  EXPECT_FALSE(plain.contains("first_k_dense_replace"));
  EXPECT_FALSE(plain.contains("n_shared_experts"));
  nlohmann::json none = j;
  none["n_shared_experts"] = nullptr;
  EXPECT_EQ(model_config_from_hf_json(none, "config.json").n_shared_experts, 0);
}

std::string error_of(const ModelConfig& c) {
  try {
    c.validate();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(MoeDenseShared, BadInputsAreOneClearError) {
  EXPECT_NE(error_of(dense_shared(4, 0)).find("first_k_dense_replace (--moe-first-k-dense) 4 must be between 0 and "
                                              "n_layer - 1 = 3"),
            std::string::npos)
      << error_of(dense_shared(4, 0));
  EXPECT_NE(error_of(dense_shared(-1, 0)).find("must be between 0"), std::string::npos);
  EXPECT_NE(error_of(dense_shared(0, -2)).find("n_shared_experts (--moe-shared-experts) must be between 0"),
            std::string::npos);
  EXPECT_NE(error_of(dense_shared(0, 1 << 30)).find("must fit a 32-bit int"), std::string::npos);
  ModelConfig llama = model_preset("llama-tiny");
  llama.n_shared_experts = 1;
  EXPECT_NE(error_of(llama).find("this llama model has no experts"), std::string::npos) << error_of(llama);
  // A Llama config.json holding the key: another family's key.
  nlohmann::json j = model_config_to_hf_json(model_preset("llama-tiny"));
  j["first_k_dense_replace"] = 1;
  EXPECT_THROW(model_config_from_hf_json(j, "config.json"), Error);
}

}  // namespace
}  // namespace trident::nn
