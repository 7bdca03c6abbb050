// Row-parallel linear layer with the region's exit and the bias epilogue (see row_parallel_linear.h).
#include "nn/row_parallel_linear.h"

#include "core/check.h"
#include "kernels/kernels.h"
#include "nn/tp_region.h"

namespace trident::nn {

RowParallelLinear::RowParallelLinear(const ParameterSet& ps, const ParamDecl& weight, const ParamDecl* bias,
                                     const LoraContext* lora)
    : in_out_(weight.in_out) {
  weight_ = declared_param_id(ps, weight);
  frozen_ = ps.info(weight_).frozen;
  if (lora != nullptr) lora_ = LoraAdapter::find(ps, weight, *lora);
  if (bias != nullptr) bias_ = declared_param_id(ps, *bias);
  const Shape& s = ps.info(weight_).local_shape;
  TRI_CHECK(s.size() == 2, "{}: not a matrix", weight.name);
  in_ = in_out_ ? s[0] : s[1];
  out_ = in_out_ ? s[1] : s[0];
}

void RowParallelLinear::forward(kernels::MatmulEngine& mm, const ParameterSet& ps, const TpContext& tp,
                                SharedScratch& s, float* out, kernels::ActOperand in, int64_t N) const {
  const bool single = tp.size == 1;
  const float* bias = bias_ >= 0 ? ps.data(bias_) : nullptr;
  float* partial = tp.sp() ? s.full.data() : out;
  if (in_out_) {
    mm.forward(partial, in, ps.data(weight_), single ? bias : nullptr, N, in_, out_);
  } else {
    TRI_CHECK(bias == nullptr, "row-parallel nn.Linear weights take no bias here");
    mm.forward_nt(partial, in, ps.data(weight_), N, in_, out_);
  }
  if (lora_) lora_->forward(mm, ps, partial, out_, in, N, s.lora.data());
  tp_exit(tp, partial, out, N, out_);
  if (!single && bias != nullptr) kernels::add_bias_rows(out, bias, tp.local_rows(N), out_);
}

void RowParallelLinear::forward_partial(kernels::MatmulEngine& mm, const ParameterSet& ps, SharedScratch& s,
                                        float* partial, kernels::ActOperand in, int64_t N) const {
  TRI_CHECK(bias_ < 0 && !in_out_, "a row-parallel partial product is for bias-free nn.Linear weights");
  mm.forward_nt(partial, in, ps.data(weight_), N, in_, out_);
  if (lora_) lora_->forward(mm, ps, partial, out_, in, N, s.lora.data());
}

void RowParallelLinear::backward_partial(kernels::MatmulEngine& mm, ParameterSet& ps, SharedScratch& s,
                                         float* dinp, const float* dfull, kernels::ActOperand in, int64_t N) const {
  mm.backward_nt(dinp, frozen_ ? nullptr : ps.grad(weight_), dfull, in, ps.data(weight_), N, in_, out_);
  if (lora_) lora_->backward(mm, ps, dinp, dfull, out_, in, N, s.lora.data());
}

void RowParallelLinear::backward(kernels::MatmulEngine& mm, ParameterSet& ps, const TpContext& tp,
                                 SharedScratch& s, float* dinp, const float* dout, kernels::ActOperand in,
                                 int64_t N) const {
  const float* dfull = tp_exit_backward(tp, dout, s.full.data(), N, out_);
  float* dweight = frozen_ ? nullptr : ps.grad(weight_);
  if (in_out_) {
    mm.backward(dinp, dweight, bias_ >= 0 && !frozen_ ? ps.grad(bias_) : nullptr, dfull, in, ps.data(weight_), N,
                in_, out_);
  } else {
    mm.backward_nt(dinp, dweight, dfull, in, ps.data(weight_), N, in_, out_);
  }
  if (lora_) lora_->backward(mm, ps, dinp, dfull, out_, in, N, s.lora.data());
}

}  // namespace trident::nn
