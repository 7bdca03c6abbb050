// One GPT-2 transformer block (pre-LN): x2 = x + attn(ln_1(x)); x3 = x2 + mlp(ln_2(x2)),
// with explicit forward and backward. Tensor parallel as Megatron-LM: c_attn and mlp.c_fc are
// column-parallel (A = [A_1 ... A_t], each rank owns whole heads), attn.c_proj and mlp.c_proj
// are row-parallel (partial sums allreduced, bias added once after the sum), so a block costs
// two allreduces forward and two backward. With tp size 1 it is the plain block.
#pragma once

#include <cstdint>
#include <string>

#include "core/memory.h"
#include "nn/gpt_config.h"
#include "nn/parameters.h"
#include "nn/tensor_parallel.h"

namespace trident::nn {

// What a block's forward saves for its backward, for one micro-batch of N = B*T tokens.
// Shapes use local (per tp rank) widths: Cl = C/tp, NHl = NH/tp.
struct BlockActivations {
  FloatBuffer ln1;        // (N, C)
  FloatBuffer ln1_mean;   // (N)
  FloatBuffer ln1_rstd;   // (N)
  FloatBuffer qkv;        // (N, 3Cl)
  FloatBuffer att;        // (B, NHl, T, T) softmax probabilities
  FloatBuffer atty;       // (N, Cl)
  FloatBuffer residual2;  // (N, C) x + attention output
  FloatBuffer ln2;        // (N, C)
  FloatBuffer ln2_mean;   // (N)
  FloatBuffer ln2_rstd;   // (N)
  FloatBuffer fch;        // (N, 4Cl)
  FloatBuffer fch_gelu;   // (N, 4Cl)

  BlockActivations() = default;
  BlockActivations(MemoryTracker& tracker, const GPTConfig& cfg, int tp, int64_t B, int64_t T);
  // Floats allocated for one block; the analytic activation formula of docs/memory.md.
  static int64_t floats(const GPTConfig& cfg, int tp, int64_t B, int64_t T);
};

// Gradient scratch shared by all blocks of a model (backward runs one block at a time).
struct BlockScratch {
  FloatBuffer dln;    // (N, C)
  FloatBuffer dqkv;   // (N, 3Cl)
  FloatBuffer datty;  // (N, Cl)
  FloatBuffer dfch;   // (N, 4Cl)

  BlockScratch() = default;
  BlockScratch(MemoryTracker& tracker, const GPTConfig& cfg, int tp, int64_t N);
};

class Block {
 public:
  // Registers h.<layer>.* in `params` (as the current group), sliced for this tp rank.
  Block(ParameterSet& params, const GPTConfig& cfg, const TpContext& tp, int layer);

  // out (N, C) = block(x (N, C)). out must not alias x.
  void forward(ParameterSet& params, BlockActivations& acts, float* out, const float* x,
               int64_t B, int64_t T) const;
  // dres (N, C): on entry d loss / d out, on exit d loss / d x (updated in place).
  // Parameter gradients accumulate.
  void backward(ParameterSet& params, const BlockActivations& acts, BlockScratch& scratch,
                float* dres, const float* x, int64_t B, int64_t T) const;

 private:
  GPTConfig cfg_;
  TpContext tp_;
  int ln1_w_, ln1_b_, attn_w_, attn_b_, proj_w_, proj_b_;
  int ln2_w_, ln2_b_, fc_w_, fc_b_, fcproj_w_, fcproj_b_;
};

}  // namespace trident::nn
