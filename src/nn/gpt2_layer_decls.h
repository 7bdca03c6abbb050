// GPT-2's per-layer parameters, declared once (in gpt2_architecture.cpp) and named by their
// role, so the block builds its modules from the declarations instead of repeating names.
#pragma once

#include <vector>

#include "nn/lora.h"
#include "nn/model_config.h"
#include "nn/param_decl.h"

namespace trident::nn {

struct Gpt2LayerDecls {
  ParamDecl ln_1_weight, ln_1_bias;
  ParamDecl c_attn_weight, c_attn_bias;          // column-parallel [q | k | v], Conv1D
  ParamDecl attn_c_proj_weight, attn_c_proj_bias;  // row-parallel
  ParamDecl ln_2_weight, ln_2_bias;
  ParamDecl c_fc_weight, c_fc_bias;              // column-parallel
  ParamDecl mlp_c_proj_weight, mlp_c_proj_bias;  // row-parallel
  // In registration (and checkpoint) order.
  std::vector<ParamDecl> all() const {
    return {ln_1_weight, ln_1_bias, c_attn_weight, c_attn_bias, attn_c_proj_weight, attn_c_proj_bias,
            ln_2_weight, ln_2_bias, c_fc_weight,   c_fc_bias,   mlp_c_proj_weight,  mlp_c_proj_bias};
  }
  // The LoRA targets (nn/lora.h), named as PEFT's target_modules name GPT-2's Conv1D modules.
  std::vector<LoraTarget> lora_targets() const {
    return {{"c_attn", "c_attn", c_attn_weight}, {"attn.c_proj", "attn.c_proj", attn_c_proj_weight},
            {"c_fc", "c_fc", c_fc_weight}, {"mlp.c_proj", "mlp.c_proj", mlp_c_proj_weight}};
  }
};

Gpt2LayerDecls gpt2_layer_decls(const ModelConfig& c, int layer);

}  // namespace trident::nn
