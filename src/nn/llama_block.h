// One Llama decoder layer exactly as Hugging Face's LlamaDecoderLayer computes it:
//   h = x + o_proj(attn(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1))),  n1 = rmsnorm_1(x)
//   out = h + down_proj(silu(gate_proj(n2)) * up_proj(n2)),                 n2 = rmsnorm_2(h)
// with nn.Linear weights [out, in], no biases, grouped-query attention (query head h uses
// key/value head h / (NH / NKV), as repeat_kv), rotary embeddings in the rotate-half convention.
// It is a TransformerBlock (nn/transformer_block.h) of RMSNorms, GQA attention whose q|k|v
// projections are one fused run, and a SwiGLU MLP whose gate|up are one fused run
// (nn/column_parallel_linear.h: one matmul each where the weights are adjacent in memory).
//
// With ModelConfig::n_experts > 0 (Mixtral) the MLP of every layer past the first_k_dense is the
// mixture of experts of nn/moe_mlp.h (plus its shared experts, if any: a dense SwiGLU of width
// n_shared_experts x I), inside the same tensor-parallel region.
//
// Tensor parallel as Megatron: q/k/v and gate/up are column-parallel (whole heads per rank),
// o_proj and down_proj row-parallel. When tp exceeds the key/value heads, tp / NKV ranks hold
// the same head (TpSplit::kKvHeads) and backward sums their gradient shares (nn/attention.h).
#pragma once

#include <memory>

#include "nn/layer.h"
#include "nn/model_config.h"
#include "nn/parameters.h"
#include "nn/tensor_parallel.h"
#include "nn/transformer_block.h"

namespace trident::nn {

// Llama's (and Mixtral's) saved activations: the block's (moe set for Mixtral).
using LlamaBlockActivations = BlockActivations;

// Layer `layer`'s local widths for a tp rank (the float counts of the architecture).
BlockShape llama_block_shape(const ModelConfig& cfg, int tp, int layer);
// Registers model.layers.<layer>.* (the family's declaration) in `params` as the current
// group, sliced for this tp rank, and builds the block from the same declarations.
std::unique_ptr<Layer> make_llama_block(ParameterSet& params, const ModelConfig& cfg, const TpContext& tp, int layer);

}  // namespace trident::nn
