// Mixtral's shared experts (DeepSeek's n_shared_experts), declared once in
// mixtral_architecture.cpp and named by role, so the block builds them from the declarations
// (as llama_layer_decls.h does for the dense MLP). gate and up are declared adjacent: the fused
// gate|up projection relies on that order.
#pragma once

#include <optional>

#include "nn/model_config.h"
#include "nn/param_decl.h"

namespace trident::nn {

struct SharedExpertDecls {
  ParamDecl gate_proj, up_proj, down_proj;  // one SwiGLU of width n_shared_experts x I
};

// Layer `layer`'s shared experts; none for a dense layer (first_k_dense) or n_shared_experts 0.
std::optional<SharedExpertDecls> shared_expert_decls(const ModelConfig& c, int layer);

}  // namespace trident::nn
