// One layer of a family for inference with a KV cache: it runs n new token rows at positions
// [pos, pos + n) of one sequence, appends their keys and values to its cache and attends over
// the cache (so generation computes each token once, and evaluation of a sequence is one call
// with pos 0). Weights come from a quant::QuantizedModel, each layer matrix fp32 or packed; the
// family's file names its own parameters, as its training block does (nn/*_block.cpp).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "nn/model_config.h"
#include "quant/quant_matmul.h"
#include "quant/quantized_model.h"

namespace trident::infer {

// Buffers the layers share (one runs at a time), grown on demand.
struct DecodeScratch {
  std::vector<float> slots[6];
  quant::LinearScratch linear;
  float* get(int slot, int64_t floats) {
    auto& v = slots[slot];
    if (static_cast<int64_t>(v.size()) < floats) v.resize(static_cast<std::size_t>(floats));
    return v.data();
  }
};

class DecodeLayer {
 public:
  virtual ~DecodeLayer() = default;
  // x (n, C): the residual stream, updated in place.
  virtual void forward(float* x, int64_t pos, int64_t n, DecodeScratch& s) = 0;
};

// Throws a clear error where the family has no decode layer yet (inference paths call it
// before loading any weights).
void require_decode_layer(nn::Family family);
// The family's layer `layer`, holding a KV cache of `max_positions` positions.
std::unique_ptr<DecodeLayer> make_decode_layer(const quant::QuantizedModel& m, int layer, int64_t max_positions);
std::unique_ptr<DecodeLayer> make_gpt2_decode_layer(const quant::QuantizedModel& m, int layer, int64_t max_positions);
std::unique_ptr<DecodeLayer> make_llama_decode_layer(const quant::QuantizedModel& m, int layer, int64_t max_positions);

// Causal attention of n query rows (positions pos .. pos+n-1) against a cache holding
// positions 0 .. pos+n-1: out (n, NH HS) from q (n rows, stride q_stride), the caches
// (max_positions, NKV HS); query head h uses key/value head h / (NH / NKV).
void cached_attention(float* out, const float* q, int64_t q_stride, const float* kcache, const float* vcache,
                      int64_t pos, int64_t n, int64_t NH, int64_t NKV, int64_t HS);

}  // namespace trident::infer
