// LoRA (Hu et al. 2021; PEFT's LoraModel) on a frozen base: which linear layers a family lets
// an adapter attach to, and the adapter parameters derived from a base weight's declaration.
//   y = base(x) + (alpha / r) (x A^T) B^T,  A [r, in], B [out, r]  (PEFT's lora_A / lora_B)
// A is initialised as PEFT does (kaiming_uniform_(a=sqrt(5)) on [r, in] = U(-1/sqrt(in),
// 1/sqrt(in))), from the counter RNG like every parameter, so every layout starts identical;
// B is zero, so a fresh adapter leaves the base model's output unchanged.
// Tensor parallelism follows the base: a column-parallel base (outputs split) splits B's rows
// the same way and replicates A; a row-parallel base (inputs split) splits A's columns the same
// way and replicates B (nn/lora_adapter.h does the matching sums).
// The family declares its targets next to its layer declarations (Architecture::lora_targets);
// nothing here names a family's parameters.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "nn/model_config.h"
#include "nn/param_decl.h"
#include "nn/parameters.h"

namespace trident::nn {

// A linear layer an adapter may attach to.
struct LoraTarget {
  std::string short_name;  // what --lora-targets names: "q", "c_attn", "attn.c_proj"
  std::string peft_name;   // PEFT's target_modules entry: "q_proj", "c_attn", "attn.c_proj"
  ParamDecl base;          // the base weight, as the family declares it
};

struct LoraDecls {
  ParamDecl a;  // [r, in]
  ParamDecl b;  // [out, r]
};

// The base module's name: the weight's Hugging Face name without ".weight".
std::string lora_module(const ParamDecl& base);
// Input and output widths of a declared (logical) matrix, nn.Linear [out, in] or Conv1D [in, out].
int64_t lora_in_width(const ParamDecl& base);
int64_t lora_out_width(const ParamDecl& base);
// The adapter of `base` at rank r: "<module>.lora_A.weight" and "<module>.lora_B.weight".
LoraDecls lora_decls(const ParamDecl& base, int rank);
// Whether tensor parallelism splits the base's inputs (row-parallel) rather than its outputs.
bool lora_row_parallel(const ParamDecl& base);

// The targets of layer `layer` that c.lora selects, in the family's declaration order.
std::vector<LoraTarget> selected_lora_targets(const ModelConfig& c, int layer);
// Throws one clear error for: targets without a rank (or a rank without targets), r < 0, a
// non-positive alpha, a target the family does not have (listing the ones it has), a target
// named twice, r larger than min(in, out) of a target.
void validate_lora(const ModelConfig& c);
// Throws unless tensor parallelism of size tp can split the selected adapters as their bases.
void check_lora_tensor_parallel(const ModelConfig& c, int tp);
// Registers layer `layer`'s adapters (this tp rank's slices) in the current group.
void add_lora(ParameterSet& params, const ModelConfig& c, int layer, int tp_rank, int tp_size);
// Adapter parameters of the logical model (0 without LoRA).
int64_t lora_parameter_count(const ModelConfig& c);
// Work floats one adapter product needs for N tokens on one of tp ranks (the widest target):
// what SharedScratch::lora holds (nn/lora_adapter.h).
int64_t lora_scratch_floats(const ModelConfig& c, int tp, int64_t N);

}  // namespace trident::nn
