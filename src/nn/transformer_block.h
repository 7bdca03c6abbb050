// A pre-norm transformer block composed of modules, with ONE forward and ONE backward body for
// every family and layout:
//   h   = x + attention(norm1(x))
//   out = h + mlp(norm2(h))
// Each half is a tensor-parallel region (Megatron): tp_enter (tp_region.h) brings the norm's
// output to every token row before the column-parallel projection, and the row-parallel
// projection that ends the module sums the partials back to this rank's rows (tp_exit). With
// tp size 1 the conjugate functions are the identity, without sequence parallelism the rows
// are all N, so the plain, tensor-parallel and sequence-parallel paths are this one body.
// Under sequence parallelism backward re-gathers each norm output for the weight gradients (as
// Megatron does, so nothing (N, C) is saved) and the norms' weight gradients are partial sums
// summed over tp once per block (NormGrads), before the group's after_group_backward.
//
// The modules: nn/norm.h, nn/attention.h, nn/mlp.h (and nn/column_parallel_linear.h,
// nn/row_parallel_linear.h inside them). A family's block (gpt2_block.h, llama_block.h) builds
// them from its declared parameters and states its shape (BlockShape) for the float counts.
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "core/memory.h"
#include "nn/attention.h"
#include "nn/layer.h"
#include "nn/mlp.h"
#include "nn/model_config.h"
#include "nn/moe_mlp.h"
#include "nn/norm.h"
#include "nn/parameters.h"
#include "nn/tensor_parallel.h"

namespace trident::nn {

// What one block saves for its backward, for one micro-batch; Nl = the rows this rank holds of
// the residual stream (N without sequence parallelism).
struct BlockActivations final : LayerActivations {
  NormActivations norm1;       // (Nl, C) and row statistics; fp32 or 16 bits (saved_operand.h)
  AttentionActivations attn;   // qkv (N, QKV), att (B, NH, T, T), atty (N, Q; fp32 or 16 bits)
  FloatBuffer h;               // (Nl, C) x + attention output
  NormActivations norm2;       // (Nl, C) and row statistics; fp32 for MoE (its router reads values)
  MlpActivations mlp;          // dense MLP or shared experts only: (N, in width), (N, I)
  std::unique_ptr<MoeActivations> moe;  // mixture-of-experts MLP only
  FloatBuffer& attention_core() override { return attn.att; }
};

// A block's local widths on one tp rank, from the config alone: what the architecture's float
// counts (memory model, scratch) are computed from, and what the built block is checked against.
struct BlockShape {
  int64_t C = 0;
  bool norm_bias = false;  // LayerNorm (GPT-2) or RMSNorm
  AttentionHeads heads;
  int64_t qkv_widest = 0;  // the widest weight of a fused q|k|v run; 0: one weight
  bool kv_replicated = false;
  bool moe = false;
  bool shared_experts = false;  // MoE with shared experts: I, mlp_in, mlp_widest are theirs
  MlpActivation activation = MlpActivation::kGelu;
  int64_t I = 0;           // the MLP activation's local width (dense)
  int64_t mlp_in = 0;      // the MLP's column-parallel output width (dense)
  int64_t mlp_widest = 0;  // the widest weight of a fused MLP input run; 0: one weight
};

class TransformerBlock : public Layer {
 public:
  TransformerBlock(const ModelConfig& cfg, const TpContext& tp, BlockShape shape, Norm norm1, Attention attn,
                   Norm norm2, Mlp mlp);

  // Bytes one block's activations take with matmul operands saved as `storage` (the analytic
  // formula of docs/memory.md), the attention core's floats (fp32 in every precision), and the
  // block's gradient scratch floats for N tokens.
  static int64_t activation_bytes(const BlockShape& s, const ModelConfig& cfg, int tp, int64_t B, int64_t T,
                                  int64_t local_rows, kernels::Precision storage);
  static int64_t attention_core_floats(const BlockShape& s, int64_t B, int64_t T) {
    return Attention::core_floats(s.heads, B, T);
  }
  static int64_t scratch_floats(const BlockShape& s, int64_t N);

  std::unique_ptr<LayerActivations> make_activations(MemoryTracker& tracker, int64_t B, int64_t T,
                                                     int64_t local_rows, bool save_attention_core,
                                                     kernels::Precision storage) const override;
  void forward(ParameterSet& params, LayerActivations& acts, float* out, const float* x, int64_t B, int64_t T,
               SharedScratch& scratch) const override;
  void backward(ParameterSet& params, const LayerActivations& acts, SharedScratch& scratch, float* dres,
                const float* x, int64_t B, int64_t T) const override;
  void recompute_attention_core(LayerActivations& acts, int64_t B, int64_t T, SharedScratch& scratch) const override;
  void set_moe_loss_weights(const MoeLossWeights& w) override { moe_weights_ = w; }
  MoeLossSums take_moe_loss_sums() override { return std::exchange(moe_loss_sums_, {}); }
  std::vector<int64_t> take_expert_load() override { return std::exchange(expert_load_, {}); }
  uint64_t take_routing_hash() override { return std::exchange(routing_hash_, 0); }
  void set_router_bias(const float* bias) override { mlp_.set_router_bias(bias); }

 private:
  struct Scratch;  // the carved SharedScratch::layer
  Scratch carve(SharedScratch& s, int64_t N) const;
  // The region's input (N, C) from a norm's saved output: forward from its fp32 values `out`,
  // backward (out null) from what was saved; gathered under sequence parallelism.
  kernels::ActOperand region_input(const NormActivations& a, SharedScratch& s, int64_t N) const;

  ModelConfig cfg_;
  TpContext tp_;
  BlockShape shape_;
  Norm norm1_;
  Attention attn_;
  Norm norm2_;
  Mlp mlp_;
  MoeLossWeights moe_weights_;  // the MoE auxiliary losses' weights (nn/moe_loss.h)
  // Sums of the auxiliary terms of the micro-batches backward ran on: statistics for the
  // metrics, written by the (const) backward, read and reset by take_moe_loss_sums.
  mutable MoeLossSums moe_loss_sums_;
  mutable std::vector<int64_t> expert_load_;  // (E) likewise, tokens per expert (MoE only)
  mutable uint64_t routing_hash_ = 0;          // likewise, nn::routing_hash summed (MoE only)
};

}  // namespace trident::nn
