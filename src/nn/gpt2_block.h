// One GPT-2 transformer block (pre-LN): x2 = x + attn(ln_1(x)); x3 = x2 + mlp(ln_2(x2)),
// with explicit forward and backward. Tensor parallel as Megatron-LM: c_attn and mlp.c_fc are
// column-parallel (A = [A_1 ... A_t], each rank owns whole heads), attn.c_proj and mlp.c_proj
// are row-parallel (partial sums allreduced, bias added once after the sum), so a block costs
// two allreduces forward and two backward. With tp size 1 it is the plain block.
// With sequence parallelism (TpContext::sequence_parallel) the residual stream and the two
// LayerNorms hold only this rank's Nl of the N token rows: all_gather before c_attn and
// mlp.c_fc, reduce_scatter after attn.c_proj and mlp.c_proj (backward: the conjugates, plus a
// re-gather of the LayerNorm output for the weight gradients, as Megatron does, so nothing
// (N, C) is saved). The LayerNorms' weight/bias gradients are then partial sums over this
// rank's rows: backward computes them into scratch, allreduces them over tp (one 4C-float
// allreduce per block) and adds the sum to the gradients, so they are complete and replicated
// before after_group_backward, with micro-batching and any data parallelism unchanged.
#pragma once

#include <cstdint>
#include <string>

#include "core/memory.h"
#include "nn/layer.h"
#include "nn/model_config.h"
#include "nn/parameters.h"
#include "nn/tensor_parallel.h"

namespace trident::nn {

// What a block's forward saves for its backward, for one micro-batch of N = B*T tokens.
// Shapes use local (per tp rank) widths: Cl = C/tp, NHl = NH/tp, and Nl = the rows this rank
// holds of the sequence-parallel regions (Nl = N without sequence parallelism).
struct Gpt2BlockActivations final : LayerActivations {
  FloatBuffer ln1;        // (Nl, C)
  FloatBuffer ln1_mean;   // (Nl)
  FloatBuffer ln1_rstd;   // (Nl)
  FloatBuffer qkv;        // (N, 3Cl)
  FloatBuffer att;        // (B, NHl, T, T) softmax probabilities
  FloatBuffer atty;       // (N, Cl)
  FloatBuffer residual2;  // (Nl, C) x + attention output
  FloatBuffer ln2;        // (Nl, C)
  FloatBuffer ln2_mean;   // (Nl)
  FloatBuffer ln2_rstd;   // (Nl)
  FloatBuffer fch;        // (N, 4Cl)
  FloatBuffer fch_gelu;   // (N, 4Cl)

  // local_rows: Nl under sequence parallelism; < 0 means N. Without save_attention_core, att
  // stays empty (selective recompute).
  Gpt2BlockActivations(MemoryTracker& tracker, const ModelConfig& cfg, int tp, int64_t B, int64_t T,
                       int64_t local_rows = -1, bool save_attention_core = true);
  FloatBuffer& attention_core() override { return att; }
  // Floats allocated for one block, att included; the analytic activation formula of
  // docs/memory.md.
  static int64_t floats(const ModelConfig& cfg, int tp, int64_t B, int64_t T, int64_t local_rows = -1);
  // Of those, att's.
  static int64_t attention_core_floats(const ModelConfig& cfg, int tp, int64_t B, int64_t T);
  // The block's share of SharedScratch::layer: dqkv (N, 3Cl), datty (N, Cl), dfch (N, 4Cl).
  static int64_t scratch_floats(const ModelConfig& cfg, int tp, int64_t N);
};

class Gpt2Block final : public Layer {
 public:
  // Registers h.<layer>.* (GPT-2's declaration) in `params` as the current group, sliced for
  // this tp rank.
  Gpt2Block(ParameterSet& params, const ModelConfig& cfg, const TpContext& tp, int layer);

  std::unique_ptr<LayerActivations> make_activations(MemoryTracker& tracker, int64_t B, int64_t T,
                                                     int64_t local_rows,
                                                     bool save_attention_core) const override;
  void forward(ParameterSet& params, LayerActivations& acts, float* out, const float* x, int64_t B,
               int64_t T, SharedScratch& scratch) const override;
  void backward(ParameterSet& params, const LayerActivations& acts, SharedScratch& scratch,
                float* dres, const float* x, int64_t B, int64_t T) const override;
  void recompute_attention_core(LayerActivations& acts, int64_t B, int64_t T,
                                SharedScratch& scratch) const override;

 private:
  struct Grads;  // the carved SharedScratch::layer
  void forward_plain(ParameterSet& params, Gpt2BlockActivations& acts, SharedScratch& s,
                     float* out, const float* x, int64_t B, int64_t T) const;
  void backward_plain(ParameterSet& params, const Gpt2BlockActivations& acts, SharedScratch& s,
                      float* dres, const float* x, int64_t B, int64_t T) const;
  void forward_sp(ParameterSet& params, Gpt2BlockActivations& acts, SharedScratch& s, float* out,
                  const float* x, int64_t B, int64_t T) const;
  void backward_sp(ParameterSet& params, const Gpt2BlockActivations& acts, SharedScratch& s,
                   float* dres, const float* x, int64_t B, int64_t T) const;

  ModelConfig cfg_;
  TpContext tp_;
  int ln1_w_, ln1_b_, attn_w_, attn_b_, proj_w_, proj_b_;
  int ln2_w_, ln2_b_, fc_w_, fc_b_, fcproj_w_, fcproj_b_;
};

}  // namespace trident::nn
