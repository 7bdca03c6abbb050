// Next-token selection (see sampling.h).
#include "nn/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/check.h"
#include "core/rng.h"

namespace trident::nn {

void apply_repetition_penalty(std::span<float> logits, std::span<const int32_t> history,
                              float penalty) {
  TRI_CHECK(penalty > 0.0f, "the repetition penalty must be positive (1 = off), got {}", penalty);
  if (penalty == 1.0f) return;
  std::vector<bool> seen(logits.size(), false);
  for (const int32_t id : history) {
    if (id < 0 || static_cast<std::size_t>(id) >= logits.size() || seen[static_cast<std::size_t>(id)]) continue;
    seen[static_cast<std::size_t>(id)] = true;
    float& x = logits[static_cast<std::size_t>(id)];
    x = x < 0.0f ? x * penalty : x / penalty;
  }
}

int32_t sample_token(std::span<const float> logits, std::span<const int32_t> history,
                     const SamplingOptions& options, uint64_t position) {
  TRI_CHECK(!logits.empty(), "sample_token: no logits");
  std::vector<float> scores(logits.begin(), logits.end());
  apply_repetition_penalty(scores, history, options.repetition_penalty);
  if (options.temperature <= 0.0f) {
    return static_cast<int32_t>(std::max_element(scores.begin(), scores.end()) - scores.begin());
  }
  const int vocab = static_cast<int>(scores.size());
  std::vector<int32_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  const int k = options.top_k > 0 ? std::min(options.top_k, vocab) : vocab;
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](int32_t a, int32_t b) { return scores[static_cast<std::size_t>(a)] > scores[static_cast<std::size_t>(b)]; });
  const float max_score = scores[static_cast<std::size_t>(order[0])];
  std::vector<double> p(static_cast<std::size_t>(k));
  double sum = 0.0;
  for (std::size_t i = 0; i < p.size(); ++i) {
    p[i] = std::exp((scores[static_cast<std::size_t>(order[i])] - max_score) / options.temperature);
    sum += p[i];
  }
  double u = uniform_at(options.seed, 0x67656e65726174ull, position) * sum;
  for (std::size_t i = 0; i < p.size(); ++i) {
    u -= p[i];
    if (u <= 0.0) return order[i];
  }
  return order[p.size() - 1];
}

}  // namespace trident::nn
