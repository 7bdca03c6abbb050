// Folding a LoRA adapter into its base weight (`trident merge-lora`): W += (alpha / r) B A, the
// product transposed where the base is Conv1D [in, out] (GPT-2, PEFT's fan_in_fan_out). The
// merged model computes x W'^T = x W^T + s (x A^T) B^T, the adapter model's output, up to
// rounding: one fp32 rounding per weight here, the sums over r in double.
#pragma once

#include "nn/param_decl.h"

namespace trident::nn {

// w: the base's logical tensor as declared; a [r, in], b [out, r] logical.
void merge_lora(const ParamDecl& base, float scale, int rank, float* w, const float* a, const float* b);

}  // namespace trident::nn
