// One GPT-2 transformer block (pre-LN): x2 = x + attn(ln_1(x)); x3 = x2 + mlp(ln_2(x2)), as a
// TransformerBlock (nn/transformer_block.h: one body for the plain, tensor- and
// sequence-parallel paths) of these modules: LayerNorms, MHA attention with the Conv1D c_attn
// [q | k | v] column-parallel (each rank whole heads) and attn.c_proj row-parallel, a GELU MLP
// with mlp.c_fc column- and mlp.c_proj row-parallel; the row-parallel biases are added once
// after the tp sum. A block costs two allreduces forward and two backward (sequence
// parallelism: all-gather/reduce-scatter pairs, plus one 4C-float allreduce of the LayerNorm
// gradients' row shares).
#pragma once

#include <memory>

#include "nn/layer.h"
#include "nn/model_config.h"
#include "nn/parameters.h"
#include "nn/tensor_parallel.h"
#include "nn/transformer_block.h"

namespace trident::nn {

// The block's local widths for a tp rank (the float counts of the architecture).
BlockShape gpt2_block_shape(const ModelConfig& cfg, int tp);
// Registers h.<layer>.* (GPT-2's declaration) in `params` as the current group, sliced for
// this tp rank, and builds the block from the same declarations.
std::unique_ptr<Layer> make_gpt2_block(ParameterSet& params, const ModelConfig& cfg, const TpContext& tp, int layer);

}  // namespace trident::nn
