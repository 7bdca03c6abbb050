// 16-bit saved matmul operands (see saved_operand.h).
#include "nn/saved_operand.h"

#include "core/check.h"

namespace trident::nn {

SavedOperand::SavedOperand(MemoryTracker& tracker, kernels::Precision storage, int64_t n)
    : buf_(tracker, MemCategory::kActivations, static_cast<std::size_t>(bytes(storage, n) / 4)),
      storage_(storage), n_(n) {}

void SavedOperand::store(const float* values, int64_t n) {
  TRI_CHECK(n <= n_, "saved operand of {} elements given {}", n_, n);
  if (!is16()) return;
  kernels::MatmulEngine::round_operand(storage_, reinterpret_cast<uint16_t*>(buf_.data()), values, n);
}

kernels::ActOperand SavedOperand::operand() const {
  if (!is16()) return {buf_.data()};
  return {reinterpret_cast<const uint16_t*>(buf_.data()), storage_};
}

const float* SavedOperand::values(float* out, int64_t n) const {
  if (!is16()) return buf_.data();
  kernels::MatmulEngine::widen_operand(storage_, out, reinterpret_cast<const uint16_t*>(buf_.data()), n);
  return out;
}

}  // namespace trident::nn
