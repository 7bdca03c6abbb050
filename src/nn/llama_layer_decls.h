// Llama's per-layer parameters, declared once (in llama_architecture.cpp) and named by their
// role, so the block builds its modules from the declarations instead of repeating names.
// q, k, v and gate, up are declared adjacent: the fused projections rely on that order.
#pragma once

#include <vector>

#include "nn/lora.h"
#include "nn/model_config.h"
#include "nn/param_decl.h"

namespace trident::nn {

struct LlamaLayerDecls {
  ParamDecl input_norm;
  ParamDecl q_proj, k_proj, v_proj, o_proj;
  ParamDecl post_attention_norm;
  ParamDecl gate_proj, up_proj, down_proj;  // the dense MLP (Mixtral replaces it)
  // In registration (and checkpoint) order; without the dense MLP when `with_mlp` is false.
  std::vector<ParamDecl> all(bool with_mlp = true) const {
    std::vector<ParamDecl> v{input_norm, q_proj, k_proj, v_proj, o_proj, post_attention_norm};
    if (with_mlp) v.insert(v.end(), {gate_proj, up_proj, down_proj});
    return v;
  }
  // The LoRA targets (nn/lora.h): short name, PEFT's module name, base. Without the dense MLP's
  // when `with_mlp` is false (Mixtral's experts take none).
  std::vector<LoraTarget> lora_targets(bool with_mlp = true) const {
    std::vector<LoraTarget> v{{"q", "q_proj", q_proj}, {"k", "k_proj", k_proj}, {"v", "v_proj", v_proj},
                              {"o", "o_proj", o_proj}};
    if (with_mlp) v.insert(v.end(), {{"gate", "gate_proj", gate_proj}, {"up", "up_proj", up_proj},
                                     {"down", "down_proj", down_proj}});
    return v;
  }
};

LlamaLayerDecls llama_layer_decls(const ModelConfig& c, int layer);

}  // namespace trident::nn
