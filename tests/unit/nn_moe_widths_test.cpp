// The experts' width apart from the dense layers' (Qwen2-MoE / DeepSeek's moe_intermediate_size,
// ModelConfig::moe_inner): the routed experts and the shared ones (S x it) take it, the first_k_dense
// layers intermediate_size. Checks that the declarations carry each width and that everything
// derived from them follows (count, tensor list, FLOPs, activation floats against the tracker),
// the config.json round trip, that a Mixtral config.json without the key keeps today's meaning
// (intermediate_size is the experts'), and the bad inputs. Training with two widths against PyTorch:
// tests/ref/llama_torch_reference_test.py moe_widths; at ep 2 / 4 against one rank:
// unit.parallel_in_process_ep_test (DeepSeek cases).
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/memory.h"
#include "nn/architecture.h"
#include "nn/model.h"
#include "nn/param_decl.h"
#include "plan/memory_model.h"

namespace trident::nn {
namespace {

// mixtral-tiny (4 layers, 4 experts, top 2, n_inner 48) with layer 0 dense, two shared experts,
// and experts 16 wide.
ModelConfig two_widths(int moe_inner = 16) {
  ModelConfig c = model_preset("mixtral-tiny");
  c.first_k_dense = 1, c.n_shared_experts = 2, c.moe_inner = moe_inner;
  return c;
}

Shape shape_of(const std::vector<ParamDecl>& v, const std::string& name) {
  for (const ParamDecl& d : v) {
    if (d.name == name) return d.shape;
  }
  ADD_FAILURE() << name << " not declared";
  return {};
}

TEST(MoeWidths, DeclarationsCarryEachWidth) {
  const ModelConfig c = two_widths();
  const Architecture& a = architecture(c.family);
  const int64_t C = c.n_embd;
  EXPECT_EQ(c.mlp_width(), 48);
  EXPECT_EQ(c.expert_width(), 16);
  EXPECT_EQ(c.shared_expert_width(), 32);
  const std::vector<ParamDecl> dense = a.layer_params(c, 0), moe = a.layer_params(c, 2);
  EXPECT_EQ(shape_of(dense, "model.layers.0.mlp.gate_proj.weight"), Shape({48, C}));
  EXPECT_EQ(shape_of(dense, "model.layers.0.mlp.down_proj.weight"), Shape({C, 48}));
  EXPECT_EQ(shape_of(moe, "model.layers.2.block_sparse_moe.experts.3.w1.weight"), Shape({16, C}));
  EXPECT_EQ(shape_of(moe, "model.layers.2.block_sparse_moe.experts.3.w3.weight"), Shape({16, C}));
  EXPECT_EQ(shape_of(moe, "model.layers.2.block_sparse_moe.experts.3.w2.weight"), Shape({C, 16}));
  EXPECT_EQ(shape_of(moe, "model.layers.2.block_sparse_moe.shared_experts.up_proj.weight"), Shape({32, C}));
  EXPECT_EQ(shape_of(moe, "model.layers.2.block_sparse_moe.shared_experts.down_proj.weight"), Shape({C, 32}));
}

TEST(MoeWidths, CountsAndFlopsDeriveFromTheWidths) {
  const ModelConfig one = two_widths(0), c = two_widths(16);  // one: experts 48 wide as today
  const int64_t C = c.n_embd, E = c.n_experts, K = c.n_experts_per_tok, S = 2, d = 48 - 16;
  const int moe_layers = c.n_layer - 1;
  // Per MoE layer E experts and the shared SwiGLU shrink by 3 matrices x d x C; the dense layer not.
  EXPECT_EQ(one.num_parameters() - c.num_parameters(), moe_layers * (E + S) * 3 * d * C);
  const std::vector<TensorSpec> specs = model_tensor_specs(c);
  EXPECT_EQ(static_cast<int64_t>(specs.size()), model_tensor_count(c));
  int64_t numel = 0;
  for (const TensorSpec& s : specs) {
    int64_t n = 1;
    for (int64_t x : s.shape) n *= x;
    numel += n;
  }
  EXPECT_EQ(numel, c.num_parameters());
  // Active: k routed experts and the shared ones per MoE layer.
  EXPECT_DOUBLE_EQ(training_flops_per_token(one, 32) - training_flops_per_token(c, 32),
                   6.0 * moe_layers * (K + S) * 3.0 * d * C);
  EXPECT_DOUBLE_EQ(layer_forward_flops(one, 1, 2, 16, 0), layer_forward_flops(c, 1, 2, 16, 0));  // dense layer
  EXPECT_GT(layer_forward_flops(one, 1, 2, 16, 1), layer_forward_flops(c, 1, 2, 16, 1));
}

TEST(MoeWidths, ActivationFloatsMatchTheTrackerPerStage) {
  for (int tp : {1, 2}) {
    const ModelConfig c = two_widths();
    const int64_t B = 2, T = 8;
    for (const auto& [begin, end] : std::vector<std::pair<int, int>>{{0, 1}, {0, 3}, {1, 4}}) {
      MemoryTracker tracker;
      const auto comm = plan::make_null_tp_comm(0, tp);  // counts only, as plan/memory_model does
      Model m(c, TpContext{0, tp, tp > 1 ? comm.get() : nullptr, false, {}}, StageSpec{begin, end, false, false});
      m.allocate(tracker);
      const std::size_t before = tracker.current(MemCategory::kActivations);
      ModelActivations acts = m.make_activations(tracker, B, T);
      EXPECT_EQ(tracker.current(MemCategory::kActivations) - before, static_cast<std::size_t>(m.activation_bytes(B, T)))
          << "tp " << tp << " layers [" << begin << ", " << end << ")";
    }
  }
}

TEST(MoeWidths, HuggingFaceKeysRoundTripAndMixtralKeepsItsMeaning) {
  const ModelConfig c = two_widths();
  const nlohmann::json j = model_config_to_hf_json(c);
  EXPECT_EQ(j.at("intermediate_size"), 48);
  EXPECT_EQ(j.at("moe_intermediate_size"), 16);
  const ModelConfig back = model_config_from_hf_json(j, "config.json");
  EXPECT_EQ(back.moe_inner, 16);
  EXPECT_EQ(back.num_parameters(), c.num_parameters());
  EXPECT_EQ(model_config_to_hf_json(back), j);
  // A Mixtral config.json has no moe_intermediate_size: its intermediate_size is the experts'.
  const nlohmann::json mixtral = model_config_to_hf_json(model_preset("mixtral-tiny"));
  EXPECT_FALSE(mixtral.contains("moe_intermediate_size"));
  const ModelConfig m = model_config_from_hf_json(mixtral, "config.json");
  EXPECT_EQ(m.moe_inner, 0);
  EXPECT_EQ(m.expert_width(), mixtral.at("intermediate_size").get<int>());
  EXPECT_EQ(m.num_parameters(), model_preset("mixtral-tiny").num_parameters());
  nlohmann::json null_width = j;
  null_width["moe_intermediate_size"] = nullptr;
  EXPECT_EQ(model_config_from_hf_json(null_width, "config.json").expert_width(), 48);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(MoeWidths, BadInputsAreOneClearError) {
  const std::string neg = error_of([] { two_widths(-4).validate(); });
  EXPECT_NE(neg.find("moe_intermediate_size (--moe-inner) must be positive"), std::string::npos) << neg;
  nlohmann::json j = model_config_to_hf_json(two_widths());
  j["moe_intermediate_size"] = 0;
  const std::string zero = error_of([&] { (void)model_config_from_hf_json(j, "cfg.json"); });
  EXPECT_NE(zero.find("cfg.json has moe_intermediate_size 0"), std::string::npos) << zero;
  const std::string tp = error_of([] { check_tensor_parallel_split(two_widths(18), 4); });
  EXPECT_NE(tp.find("the experts' width (moe_intermediate_size 18) is not divisible by tp (4)"), std::string::npos)
      << tp;
  ModelConfig llama = model_preset("llama-tiny");
  llama.moe_inner = 16;
  const std::string dense = error_of([&] { llama.validate(); });
  EXPECT_NE(dense.find("this llama model has no experts"), std::string::npos) << dense;
}

}  // namespace
}  // namespace trident::nn
