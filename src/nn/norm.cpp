// LayerNorm / RMSNorm as a module, and the sequence-parallel handling of their gradients.
#include "nn/norm.h"

#include <cstring>

#include "core/check.h"
#include "kernels/kernels.h"

namespace trident::nn {

Norm::Norm(const ParameterSet& params, const ParamDecl& weight, const ParamDecl* bias, float eps)
    : weight_(declared_param_id(params, weight)), bias_(bias != nullptr ? declared_param_id(params, *bias) : -1),
      C_(weight.shape.at(0)), eps_(eps) {}

Norm::Norm(const ParameterSet& params, int weight_id, int bias_id, float eps)
    : weight_(weight_id), bias_(bias_id), C_(params.info(weight_id).numel), eps_(eps) {}

NormActivations Norm::make_activations(MemoryTracker& tracker, int64_t rows, kernels::Precision storage) const {
  const auto A = MemCategory::kActivations;
  const auto r = static_cast<std::size_t>(rows);
  NormActivations a;
  a.out = SavedOperand(tracker, storage, rows * C_);
  if (has_bias()) a.mean = FloatBuffer(tracker, A, r);
  a.rstd = FloatBuffer(tracker, A, r);
  return a;
}

void Norm::forward(const ParameterSet& ps, float* out, float* mean, float* rstd, const float* x,
                   int64_t rows) const {
  if (has_bias()) {
    kernels::layernorm_forward(out, mean, rstd, x, ps.data(weight_), ps.data(bias_), rows, C_);
  } else {
    kernels::rmsnorm_forward(out, rstd, x, ps.data(weight_), rows, C_, eps_);
  }
}

void Norm::backward(const ParameterSet& ps, NormGradSlot g, float* dx, const float* dout, const float* x,
                    const float* mean, const float* rstd, int64_t rows) const {
  if (has_bias()) {
    kernels::layernorm_backward(dx, g.weight, g.bias, dout, x, ps.data(weight_), mean, rstd, rows, C_);
  } else {
    kernels::rmsnorm_backward(dx, g.weight, dout, x, ps.data(weight_), rstd, rows, C_);
  }
}

NormGrads::NormGrads(const TpContext& tp, SharedScratch& s, ParameterSet& params,
                     std::initializer_list<const Norm*> norms)
    : tp_(tp), params_(params), norms_(norms) {
  if (!tp.sp()) {
    for (const Norm* n : norms_) {
      slots_.push_back({params.grad(n->weight_id()), n->has_bias() ? params.grad(n->bias_id()) : nullptr});
    }
    return;
  }
  for (const Norm* n : norms_) floats_ += n->grad_floats();
  TRI_CHECK(floats_ <= static_cast<int64_t>(s.norm_grads.size()),
            "the layer's norms need {} gradient floats, the shared scratch holds {}", floats_,
            s.norm_grads.size());
  partial_ = s.norm_grads.data();
  std::memset(partial_, 0, static_cast<std::size_t>(floats_) * sizeof(float));
  float* p = partial_;
  for (const Norm* n : norms_) {
    NormGradSlot slot{p, nullptr};
    p += n->channels();
    if (n->has_bias()) slot.bias = p, p += n->channels();
    slots_.push_back(slot);
  }
}

void NormGrads::finish() {
  if (partial_ == nullptr) return;
  tp_.allreduce_sum(partial_, floats_);
  for (std::size_t i = 0; i < norms_.size(); ++i) {
    const Norm& n = *norms_[i];
    // A frozen norm (a LoRA base) has no gradient slot: its partial sums go nowhere.
    if (float* w = params_.grad(n.weight_id())) kernels::accumulate(w, slots_[i].weight, n.channels());
    if (float* b = n.has_bias() ? params_.grad(n.bias_id()) : nullptr) kernels::accumulate(b, slots_[i].bias, n.channels());
  }
}

}  // namespace trident::nn
