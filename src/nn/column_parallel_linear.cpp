// Column-parallel linear layer, fused over adjacent weights (see column_parallel_linear.h).
#include "nn/column_parallel_linear.h"

#include <algorithm>

#include "core/check.h"
#include "kernels/kernels.h"

namespace trident::nn {

ColumnParallelLinear::ColumnParallelLinear(const ParameterSet& ps, const std::vector<const ParamDecl*>& weights,
                                           const ParamDecl* bias, const LoraContext* lora) {
  TRI_CHECK(!weights.empty(), "a column-parallel linear layer needs a weight");
  in_out_ = weights.front()->in_out;
  TRI_CHECK(!in_out_ || weights.size() == 1, "{}: a fused run of Conv1D [in, out] weights is not one matrix",
            weights.front()->name);
  TRI_CHECK(bias == nullptr || (weights.size() == 1 && in_out_), "{}: only a single Conv1D weight takes a bias",
            weights.front()->name);
  for (const ParamDecl* d : weights) {
    const int id = declared_param_id(ps, *d);
    const Shape& s = ps.info(id).local_shape;
    TRI_CHECK(s.size() == 2 && d->in_out == in_out_, "{}: not a matrix of the run's layout", d->name);
    const int64_t in = in_out_ ? s[0] : s[1], out = in_out_ ? s[1] : s[0];
    TRI_CHECK(ids_.empty() || in == in_, "{}: input width {} differs from the run's {}", d->name, in, in_);
    TRI_CHECK(ids_.empty() || ps.info(id).frozen == frozen_, "{}: a run is frozen or trained as a whole", d->name);
    frozen_ = ps.info(id).frozen;
    ids_.push_back(id);
    widths_.push_back(out);
    lora_.push_back(lora != nullptr ? LoraAdapter::find(ps, *d, *lora) : std::nullopt);
    in_ = in;
    out_ += out;
  }
  if (bias != nullptr) {
    bias_ = declared_param_id(ps, *bias);
    TRI_CHECK(ps.info(bias_).frozen == frozen_, "{}: frozen unlike its weight", bias->name);
  }
}

int64_t ColumnParallelLinear::work_floats(int64_t N) const {
  if (ids_.size() == 1) return 0;
  return N * (*std::max_element(widths_.begin(), widths_.end()) + in_);
}

bool ColumnParallelLinear::fused(const ParameterSet& ps, bool grads) const {
  for (std::size_t i = 1; i < ids_.size(); ++i) {
    const int64_t prev = widths_[i - 1] * in_;
    if (ps.data(ids_[i]) != ps.data(ids_[i - 1]) + prev) return false;
    if (grads && ps.grad(ids_[i]) != ps.grad(ids_[i - 1]) + prev) return false;
  }
  return true;
}

void ColumnParallelLinear::forward(kernels::MatmulEngine& mm, const ParameterSet& ps, float* out,
                                   kernels::ActOperand in, int64_t N, float* work, float* lora_work) const {
  base_forward(mm, ps, out, in, N, work);
  int64_t col = 0;
  for (std::size_t i = 0; i < ids_.size(); ++i) {
    if (lora_[i]) lora_[i]->forward(mm, ps, out + col, out_, in, N, lora_work);
    col += widths_[i];
  }
}

void ColumnParallelLinear::base_forward(kernels::MatmulEngine& mm, const ParameterSet& ps, float* out,
                                        kernels::ActOperand in, int64_t N, float* work) const {
  if (in_out_) {
    mm.forward(out, in, ps.data(ids_[0]), bias_ >= 0 ? ps.data(bias_) : nullptr, N, in_, out_);
    return;
  }
  if (fused(ps, false)) {
    mm.forward_nt(out, in, ps.data(ids_[0]), N, in_, out_);
    return;
  }
  int64_t col = 0;
  for (std::size_t i = 0; i < ids_.size(); ++i) {
    mm.forward_nt(work, in, ps.data(ids_[i]), N, in_, widths_[i]);
    kernels::copy_columns(out + col, out_, work, widths_[i], N, widths_[i]);
    col += widths_[i];
  }
}

void ColumnParallelLinear::backward(kernels::MatmulEngine& mm, ParameterSet& ps, float* dinp,
                                    const float* dout, kernels::ActOperand in, int64_t N, float* work,
                                    float* lora_work) const {
  base_backward(mm, ps, dinp, dout, in, N, work);
  int64_t col = 0;
  for (std::size_t i = 0; i < ids_.size(); ++i) {
    if (lora_[i]) lora_[i]->backward(mm, ps, dinp, dout + col, out_, in, N, lora_work);
    col += widths_[i];
  }
}

void ColumnParallelLinear::base_backward(kernels::MatmulEngine& mm, ParameterSet& ps, float* dinp,
                                         const float* dout, kernels::ActOperand in, int64_t N, float* work) const {
  if (in_out_) {
    mm.backward(dinp, frozen_ ? nullptr : ps.grad(ids_[0]), bias_ >= 0 && !frozen_ ? ps.grad(bias_) : nullptr, dout,
                in, ps.data(ids_[0]), N, in_, out_);
    return;
  }
  const bool values = fused(ps, false);
  if (frozen_ && values) {
    // No weight gradients: the input gradient is the one product (the saving LoRA is for).
    mm.backward_nt(dinp, nullptr, dout, in, ps.data(ids_[0]), N, in_, out_);
    return;
  }
  if (values && fused(ps, true)) {
    mm.backward_nt(dinp, ps.grad(ids_[0]), dout, in, ps.data(ids_[0]), N, in_, out_);
    return;
  }
  // Separate weight gradients; the input gradient in one product where the values allow.
  if (values) mm.backward_nt(dinp, nullptr, dout, in, ps.data(ids_[0]), N, in_, out_);
  const int64_t widest = *std::max_element(widths_.begin(), widths_.end());
  float* block = work;
  float* tmp = work + N * widest;
  int64_t col = 0;
  for (std::size_t i = 0; i < ids_.size(); ++i) {
    kernels::copy_columns(block, widths_[i], dout + col, out_, N, widths_[i]);
    float* di = values ? nullptr : (i == 0 ? dinp : tmp);
    mm.backward_nt(di, frozen_ ? nullptr : ps.grad(ids_[i]), block, in, ps.data(ids_[i]), N, in_, widths_[i]);
    if (!values && i > 0) kernels::accumulate(dinp, tmp, N * in_);
    col += widths_[i];
  }
}

}  // namespace trident::nn
