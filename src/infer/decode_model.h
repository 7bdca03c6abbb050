// A decoder model for inference on one sequence with a per-layer KV cache, any declared family,
// its layer matrices fp32 or packed (quant/): token (+ position) embedding, the family's
// decode layers (infer/decode_layer.h), final norm and LM head (the embedding when tied).
// forward() runs the n tokens following those already cached, so generation feeds the prompt
// once and then one token per step, and evaluation feeds a whole window at position 0.
// The embedding, norms and head are found by their declared roles, never by name.
#pragma once

#include <cstdint>
#include <functional>
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
  // Layer by layer, for GPTQ's calibration (infer/gptq_calibrate.h), on windows at position 0:
  // x (n, C) = the embedding of ids; layer l applied to x in place (its cache overwritten).
  void embed(const int32_t* ids, int64_t n, float* x) const;
  void run_layer(int layer, float* x, int64_t n);
  // The weights the layers read: a matrix replaced in place (same name, shape) is what the
  // next run uses. The observer sees every layer matrix's input (quant::LinearScratch).
  quant::QuantizedModel& mutable_weights() { return w_; }
  void set_linear_observer(std::function<void(const quant::QuantMatrix&, const float*, int64_t)> f) {
    scratch_.linear.observe = std::move(f);
  }
  // Called after every layer matrix's product with (w, x, out, N): LoRA adapters applied
  // unmerged (infer/lora_apply.h).
  void set_linear_addend(std::function<void(const quant::QuantMatrix&, const float*, float*, int64_t)> f) {
    scratch_.linear.add_after = std::move(f);
  }
  // Bytes of weights one decode step reads: every layer matrix (packed), the norms and biases,
  // the LM head, and one embedding row.
  int64_t weight_bytes_per_token() const;

 private:
  void embed_at(const int32_t* ids, int64_t n, int64_t pos, float* x) const;
  quant::QuantizedModel w_;
  int64_t max_positions_;
  int64_t pos_ = 0;
  const float *wte_ = nullptr, *wpe_ = nullptr, *lnf_w_ = nullptr, *lnf_b_ = nullptr, *head_ = nullptr;
  std::vector<std::unique_ptr<DecodeLayer>> layers_;
  DecodeScratch scratch_;
  std::vector<float> x_, normed_, stats_, logits_;
};

}  // namespace trident::infer
