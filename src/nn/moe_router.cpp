// Routing rules of the mixture of experts (see moe_router.h).
#include "nn/moe_router.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/check.h"

namespace trident::nn {

void select_experts(const float* p, const float* bias, int64_t E, int64_t K, int32_t* sel, int64_t n_group,
                    int64_t topk_group) {
  auto score = [&](int64_t e) { return bias != nullptr ? p[e] + bias[e] : p[e]; };
  // taken: chosen, or not eligible (outside the best topk_group groups).
  std::vector<bool> taken(static_cast<std::size_t>(E), false);
  if (n_group > 1) {
    const int64_t G = E / n_group;
    std::vector<float> group(static_cast<std::size_t>(n_group));
    for (int64_t g = 0; g < n_group; ++g) {  // its two largest scores (values: ties do not matter)
      float a = -INFINITY, b = -INFINITY;
      for (int64_t e = g * G; e < (g + 1) * G; ++e) {
        const float v = score(e);
        if (v > a) {
          b = a, a = v;
        } else if (v > b) {
          b = v;
        }
      }
      group[g] = a + b;
    }
    std::vector<bool> eligible(static_cast<std::size_t>(n_group), false);
    for (int64_t j = 0; j < topk_group; ++j) {
      int64_t best = -1;
      for (int64_t g = 0; g < n_group; ++g) {  // strict > keeps the lower group on a tie
        if (!eligible[g] && (best < 0 || group[g] > group[best])) best = g;
      }
      eligible[best] = true;
    }
    for (int64_t e = 0; e < E; ++e) taken[e] = !eligible[e / G];
  }
  for (int64_t j = 0; j < K; ++j) {
    int64_t best = -1;
    for (int64_t e = 0; e < E; ++e) {  // strict > keeps the lower id on a tie
      if (!taken[e] && (best < 0 || score(e) > score(best))) best = e;
    }
    taken[best] = true;
    sel[j] = static_cast<int32_t>(best);
  }
  std::sort(sel, sel + K);  // combined in expert-id order
}

double route_token(const float* x, const float* router, const float* bias, const ModelConfig& cfg, float* probs,
                   int32_t* sel, float* weights) {
  const int64_t C = cfg.n_embd, E = cfg.n_experts, K = cfg.n_experts_per_tok;
  std::vector<double> logit(static_cast<std::size_t>(E));
  double mx = -INFINITY;
  for (int64_t e = 0; e < E; ++e) {
    double s = 0.0;
    for (int64_t c = 0; c < C; ++c) s += static_cast<double>(x[c]) * router[e * C + c];
    logit[e] = static_cast<double>(static_cast<float>(s));  // fp32 logits
    mx = std::max(mx, logit[e]);
  }
  double z = 0.0;
  for (int64_t e = 0; e < E; ++e) z += std::exp(logit[e] - mx);
  if (cfg.scoring == RouterScoring::kSigmoid) {
    for (int64_t e = 0; e < E; ++e) probs[e] = static_cast<float>(1.0 / (1.0 + std::exp(-logit[e])));
  } else {
    for (int64_t e = 0; e < E; ++e) probs[e] = static_cast<float>(std::exp(logit[e] - mx) / z);
  }
  // Top k: the largest scores (plus the aux-free bias, selection only; within the eligible
  // groups), ties to the lowest id; the weights use the unbiased scores.
  select_experts(probs, bias, E, K, sel, cfg.n_group, cfg.topk_group);
  double sum = 0.0;
  for (int64_t j = 0; j < K; ++j) sum += probs[sel[j]];
  const double scale = cfg.routed_scaling_factor;
  for (int64_t j = 0; j < K; ++j) {
    // HF adds 1e-20 to the sum: below fp32's resolution of any sum of k scores it could change.
    weights[j] = static_cast<float>((cfg.norm_topk_prob ? probs[sel[j]] / sum : probs[sel[j]]) * scale);
  }
  return mx + std::log(z);
}

int64_t expert_capacity(double factor, int64_t T, int64_t K, int64_t E) {
  if (factor <= 0) return -1;
  const double cap = std::ceil(factor * static_cast<double>(T * K) / static_cast<double>(E));
  return std::min<int64_t>(T, static_cast<int64_t>(cap));
}

int64_t apply_capacity(const int32_t* experts, const float* probs, int64_t T, int64_t E, int64_t K,
                       int64_t cap, uint8_t* keep) {
  std::fill(keep, keep + T * K, uint8_t{1});
  if (cap < 0) return 0;
  int64_t dropped = 0;
  std::vector<int64_t> pairs;  // t * K + j of the pairs that chose e
  for (int64_t e = 0; e < E; ++e) {
    pairs.clear();
    for (int64_t i = 0; i < T * K; ++i) {
      if (experts[i] == e) pairs.push_back(i);
    }
    if (static_cast<int64_t>(pairs.size()) <= cap) continue;
    // Descending probability of e, then ascending token (the pairs are in token order).
    std::stable_sort(pairs.begin(), pairs.end(),
                     [&](int64_t a, int64_t b) { return probs[(a / K) * E + e] > probs[(b / K) * E + e]; });
    for (std::size_t r = static_cast<std::size_t>(cap); r < pairs.size(); ++r) keep[pairs[r]] = 0;
    dropped += static_cast<int64_t>(pairs.size()) - cap;
  }
  return dropped;
}

void update_router_bias(float* bias, const int64_t* load, int64_t E, double rate) {
  const int64_t total = std::accumulate(load, load + E, int64_t{0});
  const auto u = static_cast<float>(rate);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t d = total - E * load[e];  // E x (mean - load_e): exact
    if (d > 0) bias[e] += u;
    if (d < 0) bias[e] -= u;
  }
}

namespace {

// SplitMix64's finaliser (Steele et al. 2014): a bijective 64-bit mix.
uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

uint64_t routing_hash(const int32_t* experts, const uint8_t* keep, int64_t B, int64_t T, int64_t K) {
  uint64_t sum = 0;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      uint64_t h = mix64(static_cast<uint64_t>(t));
      const int64_t i = (b * T + t) * K;
      for (int64_t j = 0; j < K; ++j) {
        const auto choice = static_cast<uint64_t>(experts[i + j]) * 2 + (keep == nullptr || keep[i + j] ? 1 : 0);
        h = mix64(h ^ choice);
      }
      sum += h;  // wraps: unsigned
    }
  }
  return sum;
}

std::string router_bias_name(int layer) {
  return fmt::format("model.layers.{}.block_sparse_moe.gate.e_score_correction_bias", layer);
}

std::vector<TensorSpec> router_bias_specs(const ModelConfig& c) {
  std::vector<TensorSpec> specs;
  if (!c.has_router_bias()) return specs;
  for (int l = c.first_k_dense; l < c.n_layer; ++l) specs.push_back({router_bias_name(l), {c.n_experts}});
  return specs;
}

}  // namespace trident::nn
