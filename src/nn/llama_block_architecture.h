// The part of an architecture declaration that follows from its layers being LlamaBlocks
// (nn/llama_block.h): activation and scratch sizes, the attention core, the layer factory and
// the bias-free final RMSNorm. Llama and Mixtral (whose MoE MLP lives inside the Llama block)
// both derive from it, so these facts are written once.
#pragma once

#include <memory>

#include "nn/architecture.h"
#include "nn/llama_block.h"

namespace trident::nn {

class LlamaBlockArchitecture : public Architecture {
 public:
  int64_t layer_activation_bytes(const ModelConfig& c, int tp, int64_t B, int64_t T, int64_t local_rows,
                                 int layer, kernels::Precision storage) const override {
    return TransformerBlock::activation_bytes(llama_block_shape(c, tp, layer), c, tp, B, T, local_rows, storage);
  }
  int64_t attention_core_floats(const ModelConfig& c, int tp, int64_t B, int64_t T, int layer) const override {
    return TransformerBlock::attention_core_floats(llama_block_shape(c, tp, layer), B, T);
  }
  int64_t layer_scratch_floats(const ModelConfig& c, int tp, int64_t N, int layer) const override {
    return TransformerBlock::scratch_floats(llama_block_shape(c, tp, layer), N);
  }
  std::unique_ptr<Layer> make_layer(ParameterSet& params, const ModelConfig& c, const TpContext& tp,
                                    int layer) const override {
    return make_llama_block(params, c, tp, layer);
  }
  bool final_norm_has_bias() const override { return false; }
};

}  // namespace trident::nn
