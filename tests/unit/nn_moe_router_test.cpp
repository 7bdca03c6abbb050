// The mixture of experts' routing rules (nn/moe_router.h): selection with the aux-free bias
// (chosen by p + b, weighted by the unbiased p), the per-sequence capacity rule (descending
// probability, ties by position, dropped pairs contribute zero), and the bias update, each
// against a hand computation; DeepSeek-V3's sigmoid scores with routed_scaling_factor and its
// group-limited selection on hand cases; then the same rules inside a Mixtral layer (nn/moe_mlp.h).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <cmath>
#include <vector>

#include "core/check.h"
#include "kernels/kernels.h"
#include "nn/architecture.h"
#include "nn/llama_block.h"
#include "nn/model.h"
#include "nn/moe_router.h"

namespace trident::nn {
namespace {

TEST(MoeRouter, SelectionByBiasedScoreTiesToLowestId) {
  const float p[4] = {0.4f, 0.3f, 0.2f, 0.1f};
  int32_t sel[2];
  select_experts(p, nullptr, 4, 2, sel);
  EXPECT_EQ(sel[0], 0);
  EXPECT_EQ(sel[1], 1);
  const float bias[4] = {0.0f, -0.2f, 0.0f, 0.35f};  // scores 0.4, 0.1, 0.2, 0.45
  select_experts(p, bias, 4, 2, sel);
  EXPECT_EQ(sel[0], 0);
  EXPECT_EQ(sel[1], 3);
  const float tie[4] = {0.25f, 0.25f, 0.25f, 0.25f};
  select_experts(tie, nullptr, 4, 2, sel);
  EXPECT_EQ(sel[0], 0);
  EXPECT_EQ(sel[1], 1);
}

// DeepSeek-V3's group-limited routing: E = 8 in 4 groups of 2, the best 2 groups eligible.
TEST(MoeRouter, GroupLimitedSelectionTakesTheBestGroupsByTheirTwoLargest) {
  // Group scores 0.9, 1.0, 1.05, 0.3: groups 2 and 1 eligible, so expert 0 (the largest, 0.9) is
  // not; among 2, 3, 4, 5 the top 2 are 4 (0.6) and 2 (0.5, tied with 3: the lower id).
  const float p[8] = {0.9f, 0.0f, 0.5f, 0.5f, 0.6f, 0.45f, 0.1f, 0.2f};
  int32_t sel[2];
  select_experts(p, nullptr, 8, 2, sel, 4, 2);
  EXPECT_EQ(std::vector<int>(sel, sel + 2), (std::vector<int>{2, 4}));
  select_experts(p, nullptr, 8, 2, sel);  // no group limit: the top 2 of all
  EXPECT_EQ(std::vector<int>(sel, sel + 2), (std::vector<int>{0, 4}));
  // The bias counts in the group scores too: group 3 becomes 1.1 + 1.2, group 2 stays 1.05.
  const float bias[8] = {0, 0, 0, 0, 0, 0, 1.0f, 1.0f};
  select_experts(p, bias, 8, 2, sel, 4, 2);
  EXPECT_EQ(std::vector<int>(sel, sel + 2), (std::vector<int>{6, 7}));
  // Every group tied: the lowest groups are eligible, the lowest ids chosen.
  const float tie[8] = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f};
  int32_t three[3];
  select_experts(tie, nullptr, 8, 3, three, 4, 2);
  EXPECT_EQ(std::vector<int>(three, three + 3), (std::vector<int>{0, 1, 2}));
  // An ineligible expert is never chosen, even where the eligible biased scores are negative
  // (transformers' masked_fill(0.0) would pick expert 0 or 1 here; DeepSeek's own code, -inf, not).
  const float q[4] = {0.3f, 0.2f, 0.1f, 0.1f};
  const float neg[4] = {-1.0f, -1.0f, 0.0f, -0.5f};  // groups: -1.5 and -0.3
  select_experts(q, neg, 4, 2, sel, 2, 1);
  EXPECT_EQ(std::vector<int>(sel, sel + 2), (std::vector<int>{2, 3}));
}

// DeepSeek-V3's sigmoid scores: weights = the chosen raw scores, renormalised over the k or not,
// times routed_scaling_factor; the selection by score + bias.
TEST(MoeRouter, SigmoidScoresAndScaledWeights) {
  ModelConfig c = model_preset("mixtral-tiny");
  c.n_embd = 2, c.n_experts = 4, c.n_experts_per_tok = 2;
  c.scoring = RouterScoring::kSigmoid, c.routed_scaling_factor = 2.5;
  const float x[2] = {1.0f, 0.0f};
  const float router[8] = {2.0f, 7.0f, -1.0f, 7.0f, 0.5f, 7.0f, 1.0f, 7.0f};  // logits 2, -1, 0.5, 1
  const double logit[4] = {2.0, -1.0, 0.5, 1.0};
  double s[4];
  for (int e = 0; e < 4; ++e) s[e] = static_cast<float>(1.0 / (1.0 + std::exp(-logit[e])));
  float probs[4], w[2];
  int32_t sel[2];
  route_token(x, router, nullptr, c, probs, sel, w);
  for (int e = 0; e < 4; ++e) EXPECT_FLOAT_EQ(probs[e], static_cast<float>(s[e])) << e;
  EXPECT_EQ(std::vector<int>(sel, sel + 2), (std::vector<int>{0, 3}));
  EXPECT_FLOAT_EQ(w[0], static_cast<float>(2.5 * s[0] / (s[0] + s[3])));
  EXPECT_FLOAT_EQ(w[1], static_cast<float>(2.5 * s[3] / (s[0] + s[3])));
  c.norm_topk_prob = false;
  route_token(x, router, nullptr, c, probs, sel, w);
  EXPECT_FLOAT_EQ(w[0], static_cast<float>(2.5 * s[0]));
  EXPECT_FLOAT_EQ(w[1], static_cast<float>(2.5 * s[3]));
  // A bias chooses expert 2 over 3; its weight is its raw score.
  const float bias[4] = {0.0f, 0.0f, 0.2f, 0.0f};
  route_token(x, router, bias, c, probs, sel, w);
  EXPECT_EQ(std::vector<int>(sel, sel + 2), (std::vector<int>{0, 2}));
  EXPECT_FLOAT_EQ(w[1], static_cast<float>(2.5 * s[2]));
}

// DeepSeek-V3's config.json keys: written only when not Mixtral's, read back alike; bad values
// refused by name.
TEST(MoeRouter, DeepSeekRouterKeysRoundTripAndBadValuesAreRefused) {
  ModelConfig c = model_preset("mixtral-tiny");  // 4 experts, top 2
  EXPECT_FALSE(model_config_to_hf_json(c).contains("scoring_func"));
  EXPECT_FALSE(model_config_to_hf_json(c).contains("n_group"));
  c.scoring = RouterScoring::kSigmoid, c.routed_scaling_factor = 2.5, c.n_group = 2, c.topk_group = 1;
  c.validate();
  const nlohmann::json j = model_config_to_hf_json(c);
  EXPECT_EQ(j.at("scoring_func"), "sigmoid");
  EXPECT_EQ(j.at("routed_scaling_factor"), 2.5);
  EXPECT_EQ(j.at("n_group"), 2);
  EXPECT_EQ(j.at("topk_group"), 1);
  const ModelConfig back = model_config_from_hf_json(j, "config.json");
  EXPECT_EQ(back.scoring, RouterScoring::kSigmoid);
  EXPECT_EQ(back.routed_scaling_factor, 2.5);
  EXPECT_EQ(back.n_group, 2);
  EXPECT_EQ(back.topk_group, 1);
  EXPECT_EQ(model_config_to_hf_json(back), j);
  auto error = [](const std::function<void()>& f) -> std::string {
    try {
      f();
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  nlohmann::json bad = j;
  bad["scoring_func"] = "relu";
  EXPECT_NE(error([&] { (void)model_config_from_hf_json(bad, "cfg.json"); }).find("cfg.json has scoring_func \"relu\""),
            std::string::npos);
  auto invalid = [&](auto edit) {
    ModelConfig m = c;
    edit(m);
    return error([&] { m.validate(); });
  };
  EXPECT_NE(invalid([](ModelConfig& m) { m.n_group = 3; }).find("n_group 3 must divide num_local_experts 4"),
            std::string::npos);
  EXPECT_NE(invalid([](ModelConfig& m) { m.n_group = 4, m.topk_group = 1; }).find("groups of at least 2"),
            std::string::npos);
  EXPECT_NE(invalid([](ModelConfig& m) { m.topk_group = 3; }).find("topk_group 3 must be between 1 and n_group 2"),
            std::string::npos);
  EXPECT_NE(invalid([](ModelConfig& m) { m.n_experts_per_tok = 3; }).find("at least num_experts_per_tok 3"),
            std::string::npos);
  EXPECT_NE(invalid([](ModelConfig& m) { m.router_z_loss_coef = 0.1; }).find("scoring_func is sigmoid"),
            std::string::npos);
  EXPECT_NE(invalid([](ModelConfig& m) { m.routed_scaling_factor = 0; }).find("routed_scaling_factor must be positive"),
            std::string::npos);
  ModelConfig llama = model_preset("llama-tiny");
  llama.scoring = RouterScoring::kSigmoid;
  EXPECT_NE(error([&] { llama.validate(); }).find("has no experts"), std::string::npos);
}

TEST(MoeRouter, CapacityIsCeilOfFactorTimesShareClampedToTheSequence) {
  EXPECT_EQ(expert_capacity(0.0, 8, 2, 4), -1);   // off
  EXPECT_EQ(expert_capacity(1.0, 8, 2, 4), 4);    // 8 * 2 / 4
  EXPECT_EQ(expert_capacity(0.3, 8, 2, 4), 2);    // ceil(1.2)
  EXPECT_EQ(expert_capacity(0.01, 8, 2, 4), 1);   // ceil(0.04)
  EXPECT_EQ(expert_capacity(10.0, 8, 2, 4), 8);   // an expert gets one pair per token at most
}

TEST(MoeRouter, CapacityKeepsHighestProbabilityThenEarliestToken) {
  // T = 5 tokens, K = 1, E = 2; every token chose expert 0 with p_0 = 0.6 0.9 0.8 0.9 0.8.
  const int32_t experts[5] = {0, 0, 0, 0, 0};
  const float probs[10] = {0.6f, 0.4f, 0.9f, 0.1f, 0.8f, 0.2f, 0.9f, 0.1f, 0.8f, 0.2f};
  uint8_t keep[5];
  // cap 3: the two 0.9s (tokens 1, 3), then of the tied 0.8s the earlier (token 2).
  EXPECT_EQ(apply_capacity(experts, probs, 5, 2, 1, 3, keep), 2);
  EXPECT_EQ(std::vector<int>(keep, keep + 5), (std::vector<int>{0, 1, 1, 1, 0}));
  EXPECT_EQ(apply_capacity(experts, probs, 5, 2, 1, -1, keep), 0);  // no capacity
  EXPECT_EQ(std::vector<int>(keep, keep + 5), (std::vector<int>{1, 1, 1, 1, 1}));
  // K = 2, E = 3: each expert ranked by its own probability; expert 2 (one pair) untouched.
  const int32_t e2[6] = {0, 1, 0, 1, 0, 2};
  const float p2[9] = {0.5f, 0.3f, 0.2f, 0.4f, 0.5f, 0.1f, 0.45f, 0.1f, 0.45f};
  uint8_t k2[6];
  EXPECT_EQ(apply_capacity(e2, p2, 3, 3, 2, 1, k2), 3);  // 2 of expert 0, 1 of expert 1
  // expert 0: tokens 0 (0.5), 1 (0.4), 2 (0.45) -> keeps token 0; expert 1: tokens 0 (0.3), 1 (0.5) -> token 1.
  EXPECT_EQ(std::vector<int>(k2, k2 + 6), (std::vector<int>{1, 0, 0, 1, 0, 1}));
}

TEST(MoeRouter, BiasUpdateIsRateTimesSignOfMeanMinusLoad) {
  std::vector<float> b = {0.0f, 0.5f, -0.25f, 0.125f};
  const int64_t load[4] = {5, 3, 3, 1};  // mean 3
  update_router_bias(b.data(), load, 4, 0.001);
  const float u = 0.001f;
  EXPECT_EQ(b, (std::vector<float>{0.0f - u, 0.5f, -0.25f, 0.125f + u}));
  const int64_t uneven[3] = {2, 1, 1};  // mean 4/3: above it 2, below it 1 and 1
  std::vector<float> c(3, 0.0f);
  update_router_bias(c.data(), uneven, 3, 0.5);
  EXPECT_EQ(c, (std::vector<float>{-0.5f, 0.5f, 0.5f}));
}

TEST(MoeRouter, BiasSpecsOnlyWhenTheRateIsOn) {
  ModelConfig c = model_preset("mixtral-tiny");
  EXPECT_TRUE(router_bias_specs(c).empty());
  c.router_bias_update_rate = 0.001;
  const auto specs = router_bias_specs(c);
  ASSERT_EQ(specs.size(), static_cast<std::size_t>(c.n_layer));
  EXPECT_EQ(specs[1].name, "model.layers.1.block_sparse_moe.gate.e_score_correction_bias");
  EXPECT_EQ(specs[1].shape, (Shape{c.n_experts}));
}

ModelConfig moe_shape() {
  ModelConfig c = model_preset("mixtral-tiny");
  c.n_layer = 2, c.n_positions = 16, c.vocab_size = 50, c.vocab_pad_multiple = 8;
  return c;
}

const MoeActivations& layer_moe(const ModelActivations& acts, int l) {
  return *static_cast<const LlamaBlockActivations&>(*acts.blocks[static_cast<std::size_t>(l)]).moe;
}

struct MoeRun {
  ModelConfig cfg;
  MemoryTracker tracker;
  Model model;
  ModelActivations acts;
  std::vector<int32_t> ids, targets;
  static constexpr int64_t B = 2, T = 8;
  explicit MoeRun(const ModelConfig& c) : cfg(c), model(c) {
    kernels::set_num_threads(1);
    model.allocate(tracker);
    model.params().initialize(3);
    acts = model.make_activations(tracker, B, T);
    for (int64_t i = 0; i < B * T; ++i) {
      ids.push_back(static_cast<int32_t>(i * 7 % 50)), targets.push_back(static_cast<int32_t>(i * 3 % 50));
    }
  }
  double step() {
    model.params().zero_grads();
    return model.forward_backward(acts, ids.data(), targets.data(), B, T, 1.0f / (B * T));
  }
};

TEST(MoeRouter, BiasInTheLayerChangesSelectionNotWeights) {
  ModelConfig cfg = moe_shape();
  cfg.router_bias_update_rate = 0.001;
  MoeRun plain(cfg), biased(cfg);
  std::vector<float> bias(static_cast<std::size_t>(cfg.n_layer * cfg.n_experts), 0.0f);
  for (int l = 0; l < cfg.n_layer; ++l) bias[static_cast<std::size_t>(l * cfg.n_experts + 3)] = 2.0f;  // beats any p
  biased.model.set_router_bias(bias);
  plain.step();
  biased.step();
  const int64_t E = cfg.n_experts, K = cfg.n_experts_per_tok;
  for (int l = 0; l < cfg.n_layer; ++l) {
    const MoeActivations& a = layer_moe(biased.acts, l);
    const MoeActivations& p = layer_moe(plain.acts, l);
    int changed = 0;
    for (int64_t n = 0; n < MoeRun::B * MoeRun::T; ++n) {
      const int32_t* sel = a.experts.data() + n * K;
      ASSERT_TRUE(std::find(sel, sel + K, 3) != sel + K) << "layer " << l << " token " << n;
      changed += !std::equal(sel, sel + K, p.experts.data() + n * K);
      // The weights are the unbiased probabilities of the chosen experts, renormalised.
      const float* pr = a.probs.data() + n * E;
      double sum = 0.0;
      for (int64_t j = 0; j < K; ++j) sum += pr[sel[j]];
      for (int64_t j = 0; j < K; ++j) {
        EXPECT_EQ(a.weights[static_cast<std::size_t>(n * K + j)], static_cast<float>(pr[sel[j]] / sum));
      }
    }
    EXPECT_GT(changed, 0) << "the bias changed no token's experts in layer " << l;
  }
}

TEST(MoeRouter, CapacityDropsInTheLayerAndDroppedPairsContributeNothing) {
  ModelConfig cfg = moe_shape();
  cfg.expert_capacity_factor = 0.5;  // cap = ceil(0.5 * 8 * 2 / 4) = 2 of a sequence's 16 pairs per expert
  MoeRun run(cfg);
  run.step();
  const int64_t E = cfg.n_experts, K = cfg.n_experts_per_tok, T = MoeRun::T;
  const int64_t cap = expert_capacity(cfg.expert_capacity_factor, T, K, E);
  ASSERT_EQ(cap, 2);
  for (int l = 0; l < cfg.n_layer; ++l) {
    const MoeActivations& a = layer_moe(run.acts, l);
    int64_t dropped = 0;
    for (int64_t b = 0; b < MoeRun::B; ++b) {
      for (int64_t e = 0; e < E; ++e) {
        std::vector<std::pair<float, int64_t>> chose;  // (-p, token) of the pairs that chose e
        int64_t kept = 0;
        for (int64_t t = 0; t < T; ++t) {
          for (int64_t j = 0; j < K; ++j) {
            const std::size_t i = static_cast<std::size_t>((b * T + t) * K + j);
            if (a.experts[i] != e) continue;
            chose.emplace_back(-a.probs[static_cast<std::size_t>((b * T + t) * E + e)], t);
            kept += a.keep[i];
            EXPECT_EQ(a.row_of[i] < 0, a.keep[i] == 0);
          }
        }
        std::sort(chose.begin(), chose.end());
        EXPECT_EQ(kept, std::min<int64_t>(cap, static_cast<int64_t>(chose.size())));
        for (std::size_t r = 0; r < chose.size(); ++r) {  // the first cap by (-p, t) are the kept
          const int64_t t = chose[r].second;
          const int32_t* sel = a.experts.data() + (b * T + t) * K;
          const int64_t j = std::find(sel, sel + K, e) - sel;
          EXPECT_EQ(a.keep[static_cast<std::size_t>((b * T + t) * K + j)], r < static_cast<std::size_t>(cap) ? 1 : 0);
        }
        dropped += std::max<int64_t>(0, static_cast<int64_t>(chose.size()) - cap);
      }
    }
    EXPECT_EQ(a.dropped, dropped);
    EXPECT_GT(a.dropped, 0);
    EXPECT_EQ(a.offsets[static_cast<std::size_t>(E)], MoeRun::B * T * K - a.dropped);
  }
  // The routed rows: every kept pair has one in its expert's range, every row one kept pair, a
  // dropped pair none (so it contributes nothing; the values are checked against PyTorch in
  // ref.llama_torch_reference_test, case moe_capacity_bias).
  for (int l = 0; l < cfg.n_layer; ++l) {
    const MoeActivations& a = layer_moe(run.acts, l);
    std::vector<int> seen(static_cast<std::size_t>(a.offsets[static_cast<std::size_t>(E)]), 0);
    for (int64_t i = 0; i < MoeRun::B * T * K; ++i) {
      const int32_t r = a.row_of[static_cast<std::size_t>(i)];
      if (r < 0) continue;
      const int32_t e = a.experts[static_cast<std::size_t>(i)];
      EXPECT_GE(r, a.offsets[static_cast<std::size_t>(e)]);
      EXPECT_LT(r, a.offsets[static_cast<std::size_t>(e) + 1]);
      ++seen[static_cast<std::size_t>(r)];
    }
    for (int s : seen) EXPECT_EQ(s, 1);
  }
}

TEST(MoeRouter, ModelUpdateMatchesHandComputationOverSteps) {
  ModelConfig cfg = moe_shape();
  cfg.router_bias_update_rate = 0.01;
  MoeRun run(cfg);
  const auto E = static_cast<std::size_t>(cfg.n_experts);
  std::vector<float> want(static_cast<std::size_t>(cfg.n_layer) * E, 0.0f);
  for (int s = 0; s < 3; ++s) {
    run.step();
    std::vector<int64_t> load(want.size(), 0);
    run.model.take_expert_load(load);
    for (std::size_t l = 0; l < static_cast<std::size_t>(cfg.n_layer); ++l) {
      int64_t total = 0;
      for (std::size_t e = 0; e < E; ++e) total += load[l * E + e];
      EXPECT_EQ(total, MoeRun::B * MoeRun::T * cfg.n_experts_per_tok);
      for (std::size_t e = 0; e < E; ++e) {
        const double mean = static_cast<double>(total) / static_cast<double>(E);
        const double d = mean - static_cast<double>(load[l * E + e]);
        want[l * E + e] += d > 0 ? 0.01f : d < 0 ? -0.01f : 0.0f;
      }
    }
    run.model.update_router_bias(load);
    EXPECT_EQ(run.model.router_bias(), want) << "after step " << s;
  }
}

TEST(MoeRouter, RoutingHashSeesPositionsChoicesAndDropsAndSumsOverSequences) {
  // Two sequences of T = 3 tokens, K = 2 ascending choices each.
  const int64_t T = 3, K = 2;
  const std::vector<int32_t> experts{0, 1, 2, 3, 1, 3, /**/ 0, 2, 1, 2, 0, 3};
  const std::vector<uint8_t> kept(experts.size(), 1);
  const uint64_t both = routing_hash(experts.data(), kept.data(), 2, T, K);
  // Split over micro-batches or ranks, sequence by sequence: the wrapping sum is the same.
  EXPECT_EQ(routing_hash(experts.data(), kept.data(), 1, T, K) +
                routing_hash(experts.data() + T * K, kept.data() + T * K, 1, T, K),
            both);
  // Sequences in another order: the same (the data order, not routing, places sequences).
  std::vector<int32_t> swapped(experts.begin() + T * K, experts.end());
  swapped.insert(swapped.end(), experts.begin(), experts.begin() + T * K);
  EXPECT_EQ(routing_hash(swapped.data(), kept.data(), 2, T, K), both);
  // Two tokens of a sequence trading their choices: a different hash (positions count).
  std::vector<int32_t> traded = experts;
  std::swap_ranges(traded.begin(), traded.begin() + K, traded.begin() + K);
  EXPECT_NE(routing_hash(traded.data(), kept.data(), 2, T, K), both);
  // One other expert for one token: different.
  std::vector<int32_t> other = experts;
  other[5] = 2;
  EXPECT_NE(routing_hash(other.data(), kept.data(), 2, T, K), both);
  // A pair dropped over capacity: different; no keep flags means all kept.
  std::vector<uint8_t> dropped = kept;
  dropped[7] = 0;
  EXPECT_NE(routing_hash(experts.data(), dropped.data(), 2, T, K), both);
  EXPECT_EQ(routing_hash(experts.data(), nullptr, 2, T, K), both);
}

}  // namespace
}  // namespace trident::nn
