// The KV-cache decode path (infer/decode_model.h) against the training model's full forward
// (nn::Model::forward_logits, which recomputes the whole prefix): a prompt fed at once and the
// rest one token at a time gives every position's logits within fp32 bounds, for every family
// (Llama with grouped-query attention and an untied head too; Mixtral with a dense layer, a
// shared expert and the router bias, and without them; DeepSeek-V3's sigmoid, group-limited
// router with its narrower experts).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/check.h"
#include "core/memory.h"
#include "infer/decode_model.h"
#include "nn/model.h"
#include "nn/moe_router.h"

namespace trident::infer {
namespace {

quant::QuantizedModel weights_of(nn::Model& model, quant::Format format, int group) {
  const nn::ParameterSet& ps = model.params();
  return quant::build_quantized_model(
      model.config(),
      [&](const nn::ParamDecl& d, float* dst) {
        // One process: the local tensor is the logical one (plus vocabulary padding rows after it).
        const std::vector<nn::TensorSpec> bias = nn::router_bias_specs(model.config());
        for (std::size_t m = 0; m < bias.size(); ++m) {  // state, not a parameter: the model's table
          if (bias[m].name != d.name) continue;
          const auto E = static_cast<std::size_t>(model.config().n_experts);
          std::memcpy(dst, model.router_bias().data() + m * E, E * sizeof(float));
          return;
        }
        std::memcpy(dst, ps.data(ps.find(d.name)), static_cast<std::size_t>(shape_numel(d.shape)) * sizeof(float));
      },
      format, group);
}

void expect_cache_equals_recompute(nn::ModelConfig cfg) {
  MemoryTracker tracker;
  nn::Model model(cfg);
  model.allocate(tracker);
  model.params().initialize(1234);
  if (cfg.has_router_bias()) {  // a bias large enough to change some choices (probabilities ~1/E)
    std::vector<float> bias(model.router_bias().size());
    for (std::size_t i = 0; i < bias.size(); ++i) bias[i] = 0.05f * static_cast<float>(i % 3);
    model.set_router_bias(bias);
  }
  const int64_t T = 13, V = cfg.vocab_size, Vp = model.padded_vocab_local();
  std::vector<int32_t> ids(T);
  for (int64_t t = 0; t < T; ++t) ids[static_cast<std::size_t>(t)] = static_cast<int32_t>((t * 37 + 11) % V);
  nn::ModelActivations acts = model.make_activations(tracker, 1, T);
  const float* full = model.forward_logits(acts, ids.data(), 1, T);

  DecodeModel dec(weights_of(model, quant::Format::kFp32, 0));
  const int64_t prompt = 5;
  std::vector<float> got(static_cast<std::size_t>(T * V));
  const float* p = dec.forward(ids.data(), prompt, true);
  std::memcpy(got.data(), p, static_cast<std::size_t>(prompt * V) * sizeof(float));
  for (int64_t t = prompt; t < T; ++t) {
    p = dec.forward(ids.data() + t, 1);
    std::memcpy(got.data() + t * V, p, static_cast<std::size_t>(V) * sizeof(float));
  }
  EXPECT_EQ(dec.position(), T);
  // Both paths compute the same fp32 expression in different summation orders (sgemm blocks vs
  // loops; the attention's softmax sums). Each logit is a chain of n_layer residual updates of
  // dot products of length <= 4C; relative to the logits' scale, fp32's error per dot product is
  // at most (length) eps, so the bound is n_layer * 4C * eps * max |logit| (+ the head's C eps).
  double scale = 0.0;
  for (int64_t i = 0; i < T * V; ++i) scale = std::max(scale, std::abs(static_cast<double>(got[static_cast<std::size_t>(i)])));
  const double eps = std::numeric_limits<float>::epsilon();
  const double bound = (cfg.n_layer * 4.0 * cfg.n_embd + cfg.n_embd) * eps * std::max(scale, 1.0);
  double worst = 0.0;
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t v = 0; v < V; ++v) {
      const double d = std::abs(static_cast<double>(got[static_cast<std::size_t>(t * V + v)]) - full[t * Vp + v]);
      worst = std::max(worst, d);
      ASSERT_LE(d, bound) << "position " << t << " token " << v;
    }
  }
  GTEST_LOG_(INFO) << cfg.describe() << ": worst |cache - recompute| " << worst << " (bound " << bound << ")";
}

TEST(DecodeModel, Gpt2CacheEqualsRecompute) { expect_cache_equals_recompute(nn::model_preset("tiny")); }

TEST(DecodeModel, LlamaCacheEqualsRecompute) {
  nn::ModelConfig c = nn::model_preset("llama-tiny");
  c.n_kv_head = 2;  // grouped-query attention
  c.tie_word_embeddings = false;
  expect_cache_equals_recompute(c);
}

TEST(DecodeModel, MixtralCacheEqualsRecompute) {
  // A dense first layer, a shared expert and the aux-free bias: every MLP kind the block has.
  // Routing is a discrete choice of the fp32 logits; both paths route through nn::route_token,
  // and the inputs differ by rounding only, far from this seed's closest tie.
  nn::ModelConfig c = nn::model_preset("mixtral-tiny");
  c.first_k_dense = 1;
  c.n_shared_experts = 1;
  c.router_bias_update_rate = 0.01;
  expect_cache_equals_recompute(c);
  c.first_k_dense = 0, c.n_shared_experts = 0, c.router_bias_update_rate = 0, c.norm_topk_prob = false;
  expect_cache_equals_recompute(c);
}

TEST(DecodeModel, DeepSeekRouterCacheEqualsRecompute) {
  // DeepSeek-V3's router and widths: sigmoid scores, 2 groups of 2 experts with the best one
  // eligible, the weights renormalised and x 2.5, the aux-free bias, experts narrower than the
  // dense layer 0 and a shared expert. Decode routes through the same nn::route_token.
  nn::ModelConfig c = nn::model_preset("mixtral-tiny");
  c.scoring = nn::RouterScoring::kSigmoid;
  c.n_group = 2, c.topk_group = 1;
  c.routed_scaling_factor = 2.5;
  c.router_bias_update_rate = 0.01;
  c.first_k_dense = 1, c.n_shared_experts = 1, c.moe_inner = 24;
  expect_cache_equals_recompute(c);
}

TEST(DecodeModel, CacheOverflowIsAnError) {
  MemoryTracker tracker;
  nn::Model model(nn::model_preset("tiny"));
  model.allocate(tracker);
  model.params().initialize(1);
  DecodeModel dec(weights_of(model, quant::Format::kFp32, 0), 4);
  std::vector<int32_t> ids(5, 1);
  EXPECT_THROW(dec.forward(ids.data(), 5), Error);
}

}  // namespace
}  // namespace trident::infer
