// A row-parallel linear layer (Megatron's RowParallelLinear): each tp rank holds a share of W's
// input rows and multiplies its share of the input columns, so its product is a partial sum.
// The layer ends the tensor-parallel region: forward sums the partials with tp_exit (allreduce,
// or reduce-scatter to this rank's rows under sequence parallelism) and then adds the
// replicated bias once; backward starts with tp_exit_backward. With tp size 1 the bias goes
// into the matmul itself.
//
// Weight: nn.Linear [out, in] or Conv1D [in, out] (ParamDecl::in_out); bias optional.
// LoRA (nn/lora_adapter.h): an adapter registered for the weight adds its term to the partial
// sums before tp_exit; a frozen base gets no weight or bias gradient.
#pragma once

#include <cstdint>
#include <optional>

#include "kernels/matmul_engine.h"
#include "nn/layer.h"
#include "nn/lora_adapter.h"
#include "nn/param_decl.h"
#include "nn/parameters.h"
#include "nn/tensor_parallel.h"

namespace trident::nn {

class RowParallelLinear {
 public:
  RowParallelLinear(const ParameterSet& params, const ParamDecl& weight, const ParamDecl* bias = nullptr,
                    const LoraContext* lora = nullptr);

  int64_t in_width() const { return in_; }  // local
  int64_t out_width() const { return out_; }

  // out (Nl, out_width) = the sum over tp of in (N, in_width) W^T, plus the bias. Under
  // sequence parallelism the partial sums go through scratch.full.
  void forward(kernels::MatmulEngine& mm, const ParameterSet& params, const TpContext& tp,
               SharedScratch& scratch, float* out, kernels::ActOperand in, int64_t N) const;
  // dinp (N, in_width) = d/d in (overwritten), from dout (Nl, out_width) = d/d out; the weight
  // and bias gradients accumulate (the bias's from every token row: complete on each rank).
  void backward(kernels::MatmulEngine& mm, ParameterSet& params, const TpContext& tp,
                SharedScratch& scratch, float* dinp, const float* dout, kernels::ActOperand in, int64_t N) const;
  // The same without the region's exit, for a module that ends one region with another's
  // partial sums (the shared experts' down projection inside the MoE's region, nn/mlp.h):
  // partial (N, out_width) = in W^T (overwritten; no bias), and backward from dfull (N,
  // out_width), the gradient already brought to every row.
  void forward_partial(kernels::MatmulEngine& mm, const ParameterSet& params, SharedScratch& scratch,
                       float* partial, kernels::ActOperand in, int64_t N) const;
  void backward_partial(kernels::MatmulEngine& mm, ParameterSet& params, SharedScratch& scratch, float* dinp,
                        const float* dfull, kernels::ActOperand in, int64_t N) const;

 private:
  int weight_ = -1, bias_ = -1;
  bool in_out_ = false;
  bool frozen_ = false;
  std::optional<LoraAdapter> lora_;
  int64_t in_ = 0, out_ = 0;
};

}  // namespace trident::nn
