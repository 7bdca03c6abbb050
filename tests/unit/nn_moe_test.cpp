// Mixture-of-experts stress cases (nn/moe_mlp.h): a router that sends every token to the same
// experts (all logits tied: the lowest ids win), so the other experts get zero tokens; and the
// declared parameter count and active FLOPs of the Mixtral family.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/check.h"
#include "kernels/kernels.h"
#include "nn/architecture.h"
#include "nn/llama_block.h"
#include "nn/model.h"

namespace trident::nn {
namespace {

ModelConfig moe_shape() {
  ModelConfig c = model_preset("mixtral-tiny");
  c.n_layer = 2, c.n_positions = 16, c.vocab_size = 50, c.vocab_pad_multiple = 8;
  return c;
}

TEST(MoeStress, TiedRouterSendsEveryTokenToTheLowestExpertsAndIdleExpertsGetNoGradient) {
  kernels::set_num_threads(1);
  const ModelConfig cfg = moe_shape();
  MemoryTracker tracker;
  Model model(cfg);
  model.allocate(tracker);
  model.params().initialize(3);
  model.set_moe_loss_weights({0.1f, 0.1f});
  ParameterSet& ps = model.params();
  for (int l = 0; l < cfg.n_layer; ++l) {  // a zero router: every logit ties
    const int r = ps.find(fmt::format("model.layers.{}.block_sparse_moe.gate.weight", l));
    std::fill_n(ps.data(r), ps.info(r).numel, 0.0f);
  }
  const int64_t B = 2, T = 8;
  ModelActivations acts = model.make_activations(tracker, B, T);
  std::vector<int32_t> ids, targets;
  for (int64_t i = 0; i < B * T; ++i) ids.push_back(static_cast<int32_t>(i * 7 % 50)), targets.push_back(static_cast<int32_t>(i * 3 % 50));
  ps.zero_grads();
  const double loss = model.forward_backward(acts, ids.data(), targets.data(), B, T, 1.0f / (B * T));
  EXPECT_TRUE(std::isfinite(loss));
  const int K = cfg.n_experts_per_tok;
  for (int l = 0; l < cfg.n_layer; ++l) {
    const MoeActivations& moe = *static_cast<const LlamaBlockActivations&>(*acts.blocks[static_cast<std::size_t>(l)]).moe;
    for (int64_t n = 0; n < B * T; ++n) {
      for (int j = 0; j < K; ++j) ASSERT_EQ(moe.experts[static_cast<std::size_t>(n * K + j)], j) << "token " << n;
    }
    // f_e = E / k for the k chosen experts, P_e = 1 / E: aux = k (E / k) / E = 1 per sequence.
    EXPECT_NEAR(moe.aux_sum, static_cast<double>(B), 1e-6);
    // Every logit 0: logsumexp = log E for every token, z = (log E)^2 each.
    EXPECT_NEAR(moe.z_sum, static_cast<double>(B * T) * std::log(cfg.n_experts) * std::log(cfg.n_experts), 1e-9);
    for (int e = 0; e < cfg.n_experts; ++e) {
      for (const char* w : {"w1", "w2", "w3"}) {
        const int id = ps.find(fmt::format("model.layers.{}.block_sparse_moe.experts.{}.{}.weight", l, e, w));
        double sq = 0.0;
        for (int64_t i = 0; i < ps.info(id).numel; ++i) sq += static_cast<double>(ps.grad(id)[i]) * ps.grad(id)[i];
        if (e < K) {
          EXPECT_GT(sq, 0.0) << "expert " << e << " " << w << " chosen but has no gradient";
        } else {
          EXPECT_EQ(sq, 0.0) << "expert " << e << " " << w << " got no token but has a gradient";
        }
      }
    }
  }
  for (int64_t i = 0; i < ps.total_numel(); ++i) ASSERT_TRUE(std::isfinite(ps.grads()[static_cast<std::size_t>(i)]));
  // The expert load the metrics report: every token on experts 0..k-1, none elsewhere, per
  // layer; counted once per backward and reset by the read.
  std::vector<int64_t> load(static_cast<std::size_t>(cfg.n_layer * cfg.n_experts), 0);
  model.take_expert_load(load);
  for (int l = 0; l < cfg.n_layer; ++l) {
    for (int e = 0; e < cfg.n_experts; ++e) {
      EXPECT_EQ(load[static_cast<std::size_t>(l * cfg.n_experts + e)], e < K ? B * T : 0) << "layer " << l << " expert " << e;
    }
  }
  std::vector<int64_t> again(load.size(), 0);
  model.take_expert_load(again);
  EXPECT_EQ(again, std::vector<int64_t>(load.size(), 0));
}

TEST(MoeDeclaration, CountsEveryExpertButActiveFlopsOnlyK) {
  const ModelConfig c = model_preset("mixtral-tiny");
  const int64_t C = c.n_embd, I = c.mlp_width(), E = c.n_experts, K = c.n_experts_per_tok;
  ModelConfig dense = model_preset("llama-tiny");
  dense.n_layer = c.n_layer, dense.n_inner = I;
  // Each layer trades the dense MLP (3 I C) for a router (E C) and E experts (3 I C each).
  EXPECT_EQ(c.num_parameters() - dense.num_parameters(), c.n_layer * (E * C + (E - 1) * 3 * I * C));
  const double active_extra = c.n_layer * (E * C + (K - 1) * 3.0 * I * C);
  EXPECT_DOUBLE_EQ(training_flops_per_token(c, 32) - training_flops_per_token(dense, 32), 6.0 * active_extra);
  ModelConfig bad = c;
  bad.n_experts_per_tok = bad.n_experts + 1;
  EXPECT_THROW(bad.validate(), Error);
}

}  // namespace
}  // namespace trident::nn
