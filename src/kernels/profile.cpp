// The process-wide kernel profile sink (see profile.h).
#include "kernels/profile.h"

namespace trident::kernels {

namespace detail {
ProfileSink* g_profile_sink = nullptr;
}  // namespace detail

void set_profile_sink(ProfileSink* sink) { detail::g_profile_sink = sink; }

const char* kernel_op_name(KernelOp op) {
  switch (op) {
    case KernelOp::kMatmul: return "matmul";
    case KernelOp::kMatmulNt: return "matmul_lm_head";
    case KernelOp::kAttention: return "attention";
    case KernelOp::kLayerNorm: return "layernorm";
    case KernelOp::kGelu: return "gelu";
    case KernelOp::kResidual: return "residual";
    case KernelOp::kEmbedding: return "embedding";
    case KernelOp::kCrossEntropy: return "crossentropy";
    case KernelOp::kAdamW: return "adamw";
    case KernelOp::kSumSquares: return "grad_norm";
    case KernelOp::kRmsNorm: return "rmsnorm";
    case KernelOp::kRope: return "rope";
    case KernelOp::kSwiGlu: return "swiglu";
    case KernelOp::kCount: break;
  }
  return "unknown";
}

}  // namespace trident::kernels
