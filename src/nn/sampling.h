// Choosing the next token from a model's logits, for `trident generate`: greedy or
// temperature + top-k sampling, with an optional repetition penalty. Draws come from a
// counter-based RNG keyed by (seed, position), so a seed reproduces a sample exactly.
#pragma once

#include <cstdint>
#include <span>

namespace trident::nn {

struct SamplingOptions {
  float temperature = 0.8f;        // 0: greedy (deterministic)
  int top_k = 40;                  // sample among the k most likely; 0: all
  float repetition_penalty = 1.0f;  // > 0; 1: off (see apply_repetition_penalty)
  uint64_t seed = 1337;
};

// The CTRL paper's penalty as Hugging Face applies it (RepetitionPenaltyLogitsProcessor):
// each distinct token of `history` has its logit divided by `penalty` when positive and
// multiplied by it when negative, so penalty > 1 makes any token already seen less likely.
// Ids outside [0, logits.size()) are ignored. Throws for penalty <= 0.
void apply_repetition_penalty(std::span<float> logits, std::span<const int32_t> history,
                              float penalty);

// Picks the next token from `logits` (the real vocabulary; padding rows excluded), after the
// repetition penalty over `history` (the prompt and what was generated so far). `position`
// (the index the token will take) keys the random draw.
int32_t sample_token(std::span<const float> logits, std::span<const int32_t> history,
                     const SamplingOptions& options, uint64_t position);

}  // namespace trident::nn
