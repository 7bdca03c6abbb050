// The element type of the gradient at rest (--grad-dtype): what persists between micro-batches
// and what the optimizer, the gradient norm, clipping and the nonfinite check read. fp32 (the
// default, Megatron's "main grads"), or 16 bits matching --precision: bf16 in bf16 runs, fp16
// in fp16 runs (there scaled by the loss scale, so an overflow is an inf the scaler skips).
// Each micro-batch's contribution is still made in fp32 (the GEMMs' output, the bucket's
// reduction) and folded into the 16-bit store with one rounding to nearest even
// (parallel/grad_shard.h).
#pragma once

#include <array>
#include <span>
#include <string_view>

#include "kernels/half.h"
#include "kernels/matmul_engine.h"

namespace trident::parallel {

enum class GradDType { kFp32, kBf16, kFp16 };

inline std::span<const std::string_view> grad_dtype_names() {
  static constexpr std::array<std::string_view, 3> kNames{"fp32", "bf16", "fp16"};
  return kNames;
}

// The 16-bit format of a 16-bit dtype (not of kFp32).
inline kernels::Half half_of(GradDType d) { return d == GradDType::kFp16 ? kernels::Half::kFp16 : kernels::Half::kBf16; }

// Bytes an element at rest.
inline int grad_bytes(GradDType d) { return d == GradDType::kFp32 ? 4 : 2; }

// The precision a 16-bit gradient dtype goes with (kFp32 with any).
inline bool grad_dtype_fits(GradDType d, kernels::Precision p) {
  return d == GradDType::kFp32 || (d == GradDType::kBf16 && p == kernels::Precision::kBf16) ||
         (d == GradDType::kFp16 && p == kernels::Precision::kFp16);
}

}  // namespace trident::parallel
