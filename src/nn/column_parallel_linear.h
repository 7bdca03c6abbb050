// A column-parallel linear layer (Megatron's ColumnParallelLinear): out = in W^T (+ bias), with
// each tp rank holding its share of W's output columns, so its output columns are this rank's
// and its input gradient is a partial sum (the block's tp_enter_backward sums it).
//
// One layer may be a run of declared weights that share the input and whose outputs sit side
// by side in each row: q|k|v, gate|up. A fused projection: when the run's weights (and, for
// backward's weight gradients, their gradients) are adjacent in memory in declaration order,
// the run is one [sum of widths, in] matrix and ONE product gives the packed rows (forward),
// one gives the input gradient and one the run's weight gradients (backward). ParameterSet lays
// a layer's tensors out contiguously in declaration order on each tp rank, ZeRO-3 gathers a
// layer into one buffer at the same offsets, and ZeRO 0/1 keep the flat gradient buffer, so
// that is the usual case. It is not where ZeRO-2's gradient buckets split the run (each bucket
// has its own buffer) or where anything points a parameter elsewhere: then each weight is its
// own product, copied into / out of its block of columns through a work buffer.
//
// Weights are nn.Linear [out, in] for a run; a single weight may be Conv1D [in, out] (GPT-2,
// ParamDecl::in_out) with an optional bias split like it.
//
// LoRA (nn/lora_adapter.h): a weight whose adapter is registered gets it added to its block of
// the output and of the input gradient. A frozen base (ParamInfo::frozen) gets no weight or
// bias gradient: backward then computes only the input gradient, one product for the run.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "kernels/matmul_engine.h"
#include "nn/lora_adapter.h"
#include "nn/param_decl.h"
#include "nn/parameters.h"

namespace trident::nn {

class ColumnParallelLinear {
 public:
  // `weights` in declaration order, all [out, in] of the same input width (or one Conv1D
  // weight); `bias` only with a single weight. Looks up the registered parameters (and, given
  // `lora`, the weights' adapters).
  ColumnParallelLinear(const ParameterSet& params, const std::vector<const ParamDecl*>& weights,
                       const ParamDecl* bias = nullptr, const LoraContext* lora = nullptr);

  int64_t in_width() const { return in_; }
  int64_t out_width() const { return out_; }  // local: the sum of the run's widths
  // Local output width of the i-th weight, and its parameter id.
  int64_t width(std::size_t i) const { return widths_[i]; }
  int id(std::size_t i) const { return ids_[i]; }
  std::size_t size() const { return ids_.size(); }
  // Floats of work buffer the separate-products path needs (0 for a single weight): the widest
  // weight's block for N rows; plus N * in_width() for summing input gradients (backward).
  int64_t work_floats(int64_t N) const;

  // Whether the run is one matrix in memory now (values; gradients too when `grads`).
  bool fused(const ParameterSet& params, bool grads) const;
  // out (N, out_width) = in (N, in_width) W^T (+ bias), packed [w0 | w1 | ...] per row.
  // `work`: work_floats(N) floats, used only when the run is not fused; `lora_work`: the
  // adapters' (SharedScratch::lora), used only with adapters.
  void forward(kernels::MatmulEngine& mm, const ParameterSet& params, float* out, kernels::ActOperand in,
               int64_t N, float* work, float* lora_work = nullptr) const;
  // dinp (N, in_width) = dout W (overwritten); the weight (and bias) gradients accumulate.
  void backward(kernels::MatmulEngine& mm, ParameterSet& params, float* dinp, const float* dout,
                kernels::ActOperand in, int64_t N, float* work, float* lora_work = nullptr) const;

 private:
  void base_forward(kernels::MatmulEngine& mm, const ParameterSet& params, float* out, kernels::ActOperand in, int64_t N,
                    float* work) const;
  void base_backward(kernels::MatmulEngine& mm, ParameterSet& params, float* dinp, const float* dout,
                     kernels::ActOperand in, int64_t N, float* work) const;

  std::vector<int> ids_;
  std::vector<int64_t> widths_;
  int bias_ = -1;
  bool in_out_ = false;  // Conv1D layout
  bool frozen_ = false;  // the weights (and bias): no gradients
  std::vector<std::optional<LoraAdapter>> lora_;  // per weight
  int64_t in_ = 0, out_ = 0;
};

}  // namespace trident::nn
