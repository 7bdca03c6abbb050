// Global gradient-norm clipping, as torch.nn.utils.clip_grad_norm_: the factor is
// max_norm / (norm + 1e-6), applied only when below 1. The norm itself is computed by the
// caller over the full logical gradient (each unique element once across all ranks).
#pragma once

namespace trident::optim {

// Multiplier for the gradients given their global L2 norm; 1 when clipping is off (max <= 0)
// or the norm is within bounds.
inline float clip_scale(double grad_norm, double max_norm) {
  if (max_norm <= 0.0) return 1.0f;
  const double coef = max_norm / (grad_norm + 1e-6);
  return coef < 1.0 ? static_cast<float>(coef) : 1.0f;
}

}  // namespace trident::optim
