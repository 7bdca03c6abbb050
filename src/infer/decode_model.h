// A decoder model for inference on one sequence with a per-layer KV cache, any declared family,
// its layer matrices fp32 or packed (quant/): token (+ position) embedding, the family's
// decode layers (infer/decode_layer.h), final norm and LM head (the embedding when tied).
// forward() runs the n tokens following those already cached, so generation feeds the prompt
// once and then one token per step, and evaluation feeds a whole window at position 0.
// The embedding, norms and head are found by their declared roles, never by name.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "infer/decode_layer.h"
#include "quant/quantized_model.h"

namespace trident::infer {

class DecodeModel {
 public:
  // max_positions: the cache's length (<= n_positions); 0 = n_positions.
  explicit DecodeModel(quant::QuantizedModel weights, int64_t max_positions = 0);

  const nn::ModelConfig& config() const { return w_.config; }
  const quant::QuantizedModel& weights() const { return w_; }
  int64_t position() const { return pos_; }   // tokens in the cache
  int64_t capacity() const { return max_positions_; }
  void reset() { pos_ = 0; }
  // Appends ids (n tokens; position() + n <= capacity(), checked) and returns their logits:
  // (n, vocab_size) when all_logits, else the last token's (vocab_size).
  const float* forward(const int32_t* ids, int64_t n, bool all_logits = false);
  // Bytes of weights one decode step reads: every layer matrix (packed), the norms and biases,
  // the LM head, and one embedding row.
  int64_t weight_bytes_per_token() const;

 private:
  quant::QuantizedModel w_;
  int64_t max_positions_;
  int64_t pos_ = 0;
  const float *wte_ = nullptr, *wpe_ = nullptr, *lnf_w_ = nullptr, *lnf_b_ = nullptr, *head_ = nullptr;
  std::vector<std::unique_ptr<DecodeLayer>> layers_;
  DecodeScratch scratch_;
  std::vector<float> x_, normed_, stats_, logits_;
};

}  // namespace trident::infer
