// The feed-forward half of a block as a module, over one tp region (input: every token row,
// gathered; output: this rank's summed rows):
//   GELU (GPT-2):   c_proj(gelu(c_fc(x)))  Conv1D weights with biases;
//   SwiGLU (Llama): down(silu(gate(x)) * up(x))  gate|up one fused column-parallel run
//                   (column_parallel_linear.h), packed rows [gate | up];
//   mixture of experts (Mixtral): nn/moe_mlp.h, which produces partial sums; this module
//                   ends its region with tp_exit as the row-parallel layer does for the others.
//                   With shared experts (DeepSeek's n_shared_experts) a dense SwiGLU Mlp of
//                   width S x I runs on every token too, ungated; its down projection's partial
//                   sums join the experts' before that one tp_exit (one region, one collective),
//                   and backward runs it from the same gathered output gradient.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>

#include "core/memory.h"
#include "kernels/matmul_engine.h"
#include "nn/column_parallel_linear.h"
#include "nn/layer.h"
#include "nn/moe_loss.h"
#include "nn/moe_mlp.h"
#include "nn/parameters.h"
#include "nn/row_parallel_linear.h"
#include "nn/saved_operand.h"
#include "nn/tensor_parallel.h"

namespace trident::nn {

enum class MlpActivation { kGelu, kSwiGlu };

struct MlpActivations {
  FloatBuffer pre;  // (N, in width) the column-parallel output: c_fc's, or [gate | up]
  SavedOperand act;  // (N, I) the activation's output: read by backward only as the down projection's operand
};

// The module's part of the layer's gradient scratch.
struct MlpScratch {
  float* dpre = nullptr;  // (N, in width)
  float* dact = nullptr;  // (N, I) SwiGLU (GELU works in place in dpre)
  float* work = nullptr;  // the column projection's work_floats(N)
  float* shared = nullptr;  // (N, C) MoE with shared experts: their partial output / input gradient
};

class Mlp {
 public:
  Mlp(const TpContext& tp, MlpActivation activation, ColumnParallelLinear in, RowParallelLinear out);
  // The mixture of experts, for a residual stream of C channels, with the shared experts (a
  // dense SwiGLU Mlp) or without (null).
  Mlp(const TpContext& tp, std::unique_ptr<MoeMlp> moe, int64_t C, std::unique_ptr<Mlp> shared = nullptr);

  bool is_moe() const { return moe_ != nullptr; }
  // The mixture of experts' selection bias (MoeMlp::set_router_bias); ignored by a dense MLP.
  void set_router_bias(const float* bias) {
    if (moe_) moe_->set_router_bias(bias);
  }
  bool has_shared_experts() const { return shared_ != nullptr; }
  // The dense SwiGLU's input projection: this MLP's, or its shared experts' (null: none).
  const ColumnParallelLinear* in_projection() const {
    return shared_ ? shared_->in_projection() : in_ ? &*in_ : nullptr;
  }
  // `storage`: how the activation's output is saved (saved_operand.h); pre stays fp32.
  MlpActivations make_activations(MemoryTracker& tracker, int64_t N, kernels::Precision storage) const;
  // Dense only: activation bytes, and gradient scratch floats given the column projection's
  // work floats, for N tokens, I = the activation's local width.
  static int64_t activation_bytes(MlpActivation act, int64_t N, int64_t I, kernels::Precision storage) {
    return 4 * N * (act == MlpActivation::kSwiGlu ? 2 * I : I) + SavedOperand::bytes(storage, N * I);
  }
  static int64_t scratch_floats(MlpActivation act, int64_t N, int64_t I, int64_t work) {
    return act == MlpActivation::kSwiGlu ? N * 3 * I + work : N * I + work;
  }

  // out (Nl, C) = MLP(in (N, C)) summed over tp. `moe` holds the expert activations (MoE only;
  // `a` then holds the shared experts').
  void forward(kernels::MatmulEngine& mm, const ParameterSet& params, SharedScratch& s, MlpActivations& a,
               MoeActivations* moe, const MlpScratch& g, float* out, kernels::ActOperand in, int64_t B, int64_t T) const;
  // dinp (N, C) = this rank's share of d/d in (overwritten), from dout (Nl, C). Returns the
  // micro-batch's unweighted auxiliary losses (MoE; 0 otherwise).
  MoeLossSums backward(kernels::MatmulEngine& mm, ParameterSet& params, SharedScratch& s, const MlpActivations& a,
                  const MoeActivations* moe, const MlpScratch& g, float* dinp, const float* dout, kernels::ActOperand in,
                  int64_t B, int64_t T, const MoeLossWeights& weights) const;

 private:
  // Dense SwiGLU without the region's exit (the shared experts): partial (N, C) = its partial
  // sums; backward from dfull (N, C), the gathered output gradient; dinp (N, C) overwritten.
  void swiglu_partial(kernels::MatmulEngine& mm, const ParameterSet& ps, SharedScratch& s, MlpActivations& a,
                      const MlpScratch& g, float* partial, kernels::ActOperand in, int64_t N) const;
  void swiglu_partial_backward(kernels::MatmulEngine& mm, ParameterSet& ps, SharedScratch& s, const MlpActivations& a,
                               const MlpScratch& g, float* dinp, const float* dfull, kernels::ActOperand in, int64_t N) const;

  TpContext tp_;
  MlpActivation activation_ = MlpActivation::kGelu;
  std::optional<ColumnParallelLinear> in_;
  std::optional<RowParallelLinear> out_;
  std::unique_ptr<MoeMlp> moe_;
  std::unique_ptr<Mlp> shared_;  // MoE only: the shared experts, a dense SwiGLU (or none)
  int64_t I_ = 0;  // the activation's local width (dense)
  int64_t C_ = 0;  // output channels
};

}  // namespace trident::nn
