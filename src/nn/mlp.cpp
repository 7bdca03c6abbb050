// MLP module forward/backward (see mlp.h).
#include "nn/mlp.h"

#include "core/check.h"
#include "kernels/kernels.h"
#include "nn/tp_region.h"

namespace trident::nn {

Mlp::Mlp(const TpContext& tp, MlpActivation activation, ColumnParallelLinear in, RowParallelLinear out)
    : tp_(tp), activation_(activation), in_(std::move(in)), out_(std::move(out)) {
  I_ = out_->in_width();
  C_ = out_->out_width();
  const int64_t expected = activation == MlpActivation::kSwiGlu ? 2 * I_ : I_;
  TRI_CHECK(in_->out_width() == expected && (activation != MlpActivation::kSwiGlu || in_->size() == 2),
            "MLP: input projection of width {} for an activation of width {}", in_->out_width(), I_);
}

Mlp::Mlp(const TpContext& tp, std::unique_ptr<MoeMlp> moe, int64_t C, std::unique_ptr<Mlp> shared)
    : tp_(tp), moe_(std::move(moe)), shared_(std::move(shared)), C_(C) {
  TRI_CHECK(!shared_ || (!shared_->is_moe() && shared_->activation_ == MlpActivation::kSwiGlu && shared_->C_ == C),
            "MLP: the shared experts must be a dense SwiGLU over the {} channels", C);
}

MlpActivations Mlp::make_activations(MemoryTracker& tracker, int64_t N, kernels::Precision storage) const {
  MlpActivations a;
  // The experts' activations are MoeActivations; the shared experts' are these.
  if (moe_) {
    if (shared_) return shared_->make_activations(tracker, N, storage);
    return a;
  }
  const auto A = MemCategory::kActivations;
  a.pre = FloatBuffer(tracker, A, static_cast<std::size_t>(N * in_->out_width()));
  a.act = SavedOperand(tracker, storage, N * I_);
  return a;
}

void Mlp::forward(kernels::MatmulEngine& mm, const ParameterSet& ps, SharedScratch& s, MlpActivations& a,
                  MoeActivations* moe, const MlpScratch& g, float* out, kernels::ActOperand in, int64_t B,
                  int64_t T) const {
  const int64_t N = B * T;
  if (moe_) {
    float* partial = tp_.sp() ? s.full.data() : out;
    TRI_CHECK(in.f32 != nullptr, "MoE: the router reads its input as fp32 values");
    moe_->forward(mm, ps, *moe, partial, in.f32, B, T);
    if (shared_) {
      shared_->swiglu_partial(mm, ps, s, a, g, g.shared, in, N);
      kernels::accumulate(partial, g.shared, N * C_);
    }
    tp_exit(tp_, partial, out, N, C_);
    return;
  }
  in_->forward(mm, ps, a.pre.data(), in, N, g.work, s.lora.data());
  // The activation's fp32 output goes through dpre (free until backward) when saved in 16 bits.
  float* act = a.act.target(g.dpre);
  if (activation_ == MlpActivation::kSwiGlu) {
    kernels::swiglu_packed_forward(act, a.pre.data(), N, I_);
  } else {
    kernels::gelu_forward(act, a.pre.data(), N * I_);
  }
  a.act.store(act, N * I_);
  out_->forward(mm, ps, tp_, s, out, a.act.operand(), N);
}

MoeLossSums Mlp::backward(kernels::MatmulEngine& mm, ParameterSet& ps, SharedScratch& s, const MlpActivations& a,
                     const MoeActivations* moe, const MlpScratch& g, float* dinp, const float* dout,
                     kernels::ActOperand in, int64_t B, int64_t T, const MoeLossWeights& weights) const {
  const int64_t N = B * T;
  if (moe_) {
    const float* dfull = tp_exit_backward(tp_, dout, s.full.data(), N, C_);
    TRI_CHECK(in.f32 != nullptr, "MoE: the router reads its input as fp32 values");
    moe_->backward(mm, ps, *moe, dinp, dfull, in.f32, B, T, weights);
    if (shared_) {
      shared_->swiglu_partial_backward(mm, ps, s, a, g, g.shared, dfull, in, N);
      kernels::accumulate(dinp, g.shared, N * C_);
    }
    return {moe->aux_sum, moe->z_sum, static_cast<double>(moe->dropped)};
  }
  if (activation_ == MlpActivation::kSwiGlu) {
    out_->backward(mm, ps, tp_, s, g.dact, dout, a.act.operand(), N);
    kernels::swiglu_packed_backward(g.dpre, g.dact, a.pre.data(), N, I_);
  } else {
    out_->backward(mm, ps, tp_, s, g.dpre, dout, a.act.operand(), N);
    kernels::gelu_backward(g.dpre, a.pre.data(), g.dpre, N * I_);
  }
  in_->backward(mm, ps, dinp, g.dpre, in, N, g.work, s.lora.data());
  return {};
}

void Mlp::swiglu_partial(kernels::MatmulEngine& mm, const ParameterSet& ps, SharedScratch& s, MlpActivations& a,
                         const MlpScratch& g, float* partial, kernels::ActOperand in, int64_t N) const {
  in_->forward(mm, ps, a.pre.data(), in, N, g.work, s.lora.data());
  float* act = a.act.target(g.dpre);
  kernels::swiglu_packed_forward(act, a.pre.data(), N, I_);
  a.act.store(act, N * I_);
  out_->forward_partial(mm, ps, s, partial, a.act.operand(), N);
}

void Mlp::swiglu_partial_backward(kernels::MatmulEngine& mm, ParameterSet& ps, SharedScratch& s,
                                  const MlpActivations& a, const MlpScratch& g, float* dinp, const float* dfull,
                                  kernels::ActOperand in, int64_t N) const {
  out_->backward_partial(mm, ps, s, g.dact, dfull, a.act.operand(), N);
  kernels::swiglu_packed_backward(g.dpre, g.dact, a.pre.data(), N, I_);
  in_->backward(mm, ps, dinp, g.dpre, in, N, g.work, s.lora.data());
}

}  // namespace trident::nn
