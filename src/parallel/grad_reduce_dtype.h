// The element type of the data-parallel gradient communication (--grad-reduce-dtype): fp32
// (MPI's own sum), or bf16 (Communicator::allreduce_bf16 / reduce_scatter_bf16_v: half the
// bytes, each reduced element round_bf16(sum over dp ranks in rank order of round_bf16(g_r)),
// added in fp32). The gradients the optimizer reads are fp32 unless --grad-dtype (grad_dtype.h).
#pragma once

#include <array>
#include <span>
#include <string_view>

namespace trident::parallel {

enum class GradReduceDType { kFp32, kBf16 };

inline std::span<const std::string_view> grad_reduce_dtype_names() {
  static constexpr std::array<std::string_view, 2> kNames{"fp32", "bf16"};
  return kNames;
}

}  // namespace trident::parallel
