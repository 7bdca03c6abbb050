// A parameter as an architecture declares it, once: its Hugging Face name, logical shape, how
// tensor parallelism splits it, whether AdamW decays it, how it is initialised, and the role
// generic code may ask for (the token embedding, the LM head, ...) instead of naming it.
// Everything else -- the parameter count, the checkpoint tensor list, each rank's slice, the
// FLOP formula -- is derived from these declarations (nn/architecture.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "nn/model_config.h"
#include "nn/parameters.h"

namespace trident::nn {

// How tensor parallelism splits a parameter over the tp ranks.
enum class TpSplit {
  kReplicated,  // every tp rank holds all of it (norms, row-parallel biases)
  // Dimension `dim` is `sections` equal parts (a fused q|k|v is 3); each part is split over tp
  // in whole units of `unit` (a head's channels, or 1), rank r taking the r-th slice of each.
  kSplit,
  // The vocabulary rows (dim 0), padded up to ModelConfig::padded_vocab(tp): rank r holds rows
  // [r Vp/tp, (r+1) Vp/tp); rows past vocab_size are padding (Megatron's VocabParallelEmbedding).
  kVocab,
  // Key/value heads (dim 0 of an nn.Linear [heads * unit, in]): split like kSplit when tp
  // divides the head count; when the head count divides tp, each rank holds the one head its
  // query heads use and the tp / heads ranks holding it are replicas whose gradients the
  // model sums (Megatron's GQA with tp > num_key_value_heads).
  kKvHeads,
};

struct ParamDecl {
  std::string name;  // Hugging Face name
  Shape shape;       // logical, as Hugging Face stores it
  TpSplit split = TpSplit::kReplicated;
  int dim = 0;
  int sections = 1;
  int64_t unit = 1;
  bool weight_decay = false;
  float init_std = 0.0f;  // > 0: normal(0, init_std); otherwise the constant init_value
  float init_value = 0.0f;
  // > 0 (and init_std 0): uniform on [-init_uniform, init_uniform] (a LoRA A matrix, nn/lora.h).
  float init_uniform = 0.0f;
  ParamRole role = ParamRole::kOther;
  // Used by the embedding and, as the LM head, by the last stage: one logical tensor, counted
  // and saved once; a pipeline whose head is on another stage holds a copy whose gradient is
  // summed with the embedding's (ParamInfo::tied_copy).
  bool tied = false;
  // A matrix every token multiplies with (counts in the 6N of the FLOP formula). A tied
  // embedding counts: the head multiplies with it.
  bool matmul = false;
  // Read only as a matmul operand, through the matmul engine (forward's x W^T, backward's dy W;
  // the weight gradient x^T dy does not read it): under bf16 the engine reads the bf16 copy
  // (nn/bf16_weights.h), never the fp32 values. Layer matrices and an untied LM head; not an
  // embedding (looked up as values), norms, biases, the fp32 router or LoRA's adapters. What
  // may one day hold such a parameter's fp32 master only as a ZeRO shard (docs/memory.md, "Not
  // yet"); tests/unit/operand_only_params_test poisons these values and expects the same bits.
  bool operand_only = false;
  // Quantization and QLoRA keep it fp32 although it is a layer matrix: the MoE router, whose
  // logits choose experts (a rounded router routes other tokens elsewhere; nn/moe_router.h).
  bool keep_fp32 = false;
  // A matrix stored as Hugging Face's Conv1D [in, out] (GPT-2); otherwise nn.Linear's
  // [out, in]. Quantization (quant/) stores every matrix [out, in] and transposes by this.
  bool in_out = false;
  // The mixture-of-experts expert this weight belongs to (-1: none). A token multiplies with
  // it only when routed there, so the FLOP formula counts it n_experts_per_tok / n_experts
  // times; expert parallelism will shard by it.
  int expert = -1;
  // A LoRA adapter matrix (nn/lora.h): the only kind of parameter a LoRA run trains; every
  // other declared parameter of such a run is registered frozen (ParamInfo::frozen).
  bool lora = false;
};

// The matrices weight-only quantization packs and a QLoRA run holds packed: the layers' 2-D
// matmul weights (not the embeddings, the LM head, norms, biases or adapters;
// quant::is_quantizable agrees for every family `trident quantize` takes).
bool is_packable(const ParamDecl& d);

// This tp rank's slice of a declared parameter of a model shaped `config`. Throws, naming the
// parameter and the fix, when the split does not divide.
ParamInfo shard_for_tp(const ParamDecl& decl, const ModelConfig& config, int tp_rank, int tp_size);
// Adds each declaration's slice for this tp rank to `params` (in the current group).
void add_declared(ParameterSet& params, const std::vector<ParamDecl>& decls, const ModelConfig& config,
                  int tp_rank, int tp_size);
// The declarations expert-parallel rank ep_rank of ep_size holds: every non-expert one and the
// weights of its experts [ep_rank E / ep_size, (ep_rank + 1) E / ep_size) (nn/expert_parallel.h).
std::vector<ParamDecl> local_experts(std::vector<ParamDecl> decls, int ep_rank, int ep_size, int n_experts);

// The id under which a module's declared parameter was registered; one clear error when the
// block never registered it (a module handed a declaration its layer did not add).
int declared_param_id(const ParameterSet& params, const ParamDecl& decl);

}  // namespace trident::nn
