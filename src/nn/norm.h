// A normalisation over the channels of each token row, as a module: LayerNorm (GPT-2: weight
// and bias, eps 1e-5) or RMSNorm (Llama: weight only, eps from the config). It finds its
// parameters from the family's declarations (the block registered them) and runs on the rows
// the residual stream holds: Nl of N under sequence parallelism.
//
// Under sequence parallelism each tp rank sees only its own rows, so the weight (and bias)
// gradients it computes are partial sums over tp. NormGrads is that handling, written once:
// a layer's norms write into scratch slots, and finish() sums the slots over tp (one
// allreduce per layer) and adds them to the gradients; without sequence parallelism the
// slots are the gradients themselves.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <vector>

#include "core/memory.h"
#include "nn/layer.h"
#include "nn/param_decl.h"
#include "nn/parameters.h"
#include "nn/saved_operand.h"
#include "nn/tensor_parallel.h"

namespace trident::nn {

// What a norm's forward saves: the normalised rows and the row statistics.
struct NormActivations {
  SavedOperand out;  // (rows, C): read by backward only as the next projection's operand
  FloatBuffer mean;  // (rows), LayerNorm only
  FloatBuffer rstd;  // (rows)
};

// Where a norm's backward accumulates its weight and bias (null without) gradients.
struct NormGradSlot {
  float* weight = nullptr;
  float* bias = nullptr;
};

class Norm {
 public:
  // bias null: RMSNorm with `eps`; otherwise LayerNorm (the kernel's eps 1e-5).
  Norm(const ParameterSet& params, const ParamDecl& weight, const ParamDecl* bias, float eps);
  // From registered parameter ids (bias_id < 0: RMSNorm), for code that knows them by role.
  Norm(const ParameterSet& params, int weight_id, int bias_id, float eps);

  bool has_bias() const { return bias_ >= 0; }
  int64_t channels() const { return C_; }
  // Gradient floats of its parameters (C, or 2C with the bias).
  int64_t grad_floats() const { return has_bias() ? 2 * C_ : C_; }
  // `storage`: how the output is saved (saved_operand.h); the statistics are fp32.
  NormActivations make_activations(MemoryTracker& tracker, int64_t rows, kernels::Precision storage) const;
  // Bytes make_activations allocates.
  static int64_t activation_bytes(bool has_bias, int64_t rows, int64_t C, kernels::Precision storage) {
    return SavedOperand::bytes(storage, rows * C) + 4 * rows * (has_bias ? 2 : 1);
  }

  // out (rows, C) = norm(x); mean (rows, LayerNorm only) and rstd (rows) saved for backward.
  void forward(const ParameterSet& params, float* out, float* mean, float* rstd, const float* x,
               int64_t rows) const;
  // Saves into `a`; returns the fp32 output: a's own buffer, or `temp` ((rows, C) floats) when
  // the output is saved in 16 bits.
  const float* forward(const ParameterSet& params, NormActivations& a, const float* x, int64_t rows,
                       float* temp) const {
    float* out = a.out.target(temp);
    forward(params, out, a.mean.data(), a.rstd.data(), x, rows);
    a.out.store(out, rows * C_);
    return out;
  }
  // dx (rows, C) += d/dx for dout = d/d(norm output); the parameter gradients accumulate into
  // `grads` (this norm's slot of a NormGrads).
  void backward(const ParameterSet& params, NormGradSlot grads, float* dx, const float* dout, const float* x,
                const float* mean, const float* rstd, int64_t rows) const;
  void backward(const ParameterSet& params, NormGradSlot grads, float* dx, const float* dout,
                const NormActivations& a, const float* x, int64_t rows) const {
    backward(params, grads, dx, dout, x, a.mean.data(), a.rstd.data(), rows);
  }
  int weight_id() const { return weight_; }
  int bias_id() const { return bias_; }

 private:
  int weight_ = -1, bias_ = -1;
  int64_t C_ = 0;
  float eps_ = 0.0f;
};

// Where one layer backward's norms accumulate their parameter gradients (see above).
class NormGrads {
 public:
  // Zeroes the scratch slots (sequence parallelism: scratch.norm_grads holds them, 4C floats).
  NormGrads(const TpContext& tp, SharedScratch& scratch, ParameterSet& params,
            std::initializer_list<const Norm*> norms);
  // The slot of the i-th norm of the constructor's list.
  NormGradSlot slot(std::size_t i) const { return slots_[i]; }
  // Sequence parallelism: sums the slots over tp and adds them to the gradients. Collective.
  void finish();

 private:
  const TpContext& tp_;
  ParameterSet& params_;
  std::vector<const Norm*> norms_;
  std::vector<NormGradSlot> slots_;
  float* partial_ = nullptr;  // sequence parallelism only
  int64_t floats_ = 0;
};

}  // namespace trident::nn
