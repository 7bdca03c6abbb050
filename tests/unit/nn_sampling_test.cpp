// Next-token selection: greedy, reproducible sampling, top-k, and the repetition penalty
// with Hugging Face's semantics (divide positive logits, multiply negative ones, once per
// distinct token).
#include <gtest/gtest.h>

#include <set>
#include <vector>

#include "core/check.h"
#include "nn/sampling.h"
#include "../support/expect_error.h"

namespace trident::nn {
namespace {

TEST(RepetitionPenalty, DividesPositiveMultipliesNegativeOncePerToken) {
  std::vector<float> logits{2.0f, -1.0f, 0.5f, 3.0f};
  const std::vector<int32_t> history{0, 1, 0, 0, 7, -2};  // 0 thrice; 7 and -2 out of range
  apply_repetition_penalty(logits, history, 2.0f);
  EXPECT_EQ(logits, (std::vector<float>{1.0f, -2.0f, 0.5f, 3.0f}));
}

TEST(RepetitionPenalty, OneIsOffAndNonPositiveIsRefused) {
  std::vector<float> logits{2.0f, -1.0f};
  const std::vector<int32_t> history{0, 1};
  apply_repetition_penalty(logits, history, 1.0f);
  EXPECT_EQ(logits, (std::vector<float>{2.0f, -1.0f}));
  EXPECT_ERROR_HAS(apply_repetition_penalty(logits, history, 0.0f), "must be positive");
}

TEST(SampleToken, GreedyTakesTheLargestAfterThePenalty) {
  const std::vector<float> logits{1.0f, 3.0f, 2.5f};
  SamplingOptions greedy;
  greedy.temperature = 0.0f;
  EXPECT_EQ(sample_token(logits, std::vector<int32_t>{}, greedy, 0), 1);
  // Token 1 was already generated: 3 / 1.5 = 2 < 2.5, so token 2 wins.
  greedy.repetition_penalty = 1.5f;
  EXPECT_EQ(sample_token(logits, std::vector<int32_t>{1}, greedy, 0), 2);
}

TEST(SampleToken, SeededDrawsRepeatAndStayInTheTopK) {
  const std::vector<float> logits{0.1f, 2.0f, 1.9f, -3.0f, 1.8f, 0.0f};
  SamplingOptions o;
  o.temperature = 1.0f, o.top_k = 3, o.seed = 42;
  std::set<int32_t> drawn;
  for (uint64_t pos = 0; pos < 200; ++pos) {
    const int32_t t = sample_token(logits, std::vector<int32_t>{}, o, pos);
    EXPECT_EQ(t, sample_token(logits, std::vector<int32_t>{}, o, pos)) << "same seed and position";
    drawn.insert(t);
  }
  EXPECT_EQ(drawn, (std::set<int32_t>{1, 2, 4})) << "top-3 only, and all three get drawn";
}

}  // namespace
}  // namespace trident::nn
