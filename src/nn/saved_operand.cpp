// 16-bit saved matmul operands (see saved_operand.h).
#include "nn/saved_operand.h"

#include <cstring>

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

void SavedOperand::put(int64_t at, const float* values, int64_t n) {
  TRI_CHECK(at >= 0 && n >= 0 && at + n <= n_, "saved operand of {} elements given [{}, {})", n_, at, at + n);
  if (!is16()) {
    std::memcpy(buf_.data() + at, values, static_cast<std::size_t>(n) * sizeof(float));
    return;
  }
  kernels::MatmulEngine::round_operand(storage_, reinterpret_cast<uint16_t*>(buf_.data()) + at, values, n);
}

void SavedOperand::ensure(MemoryTracker& tracker, int64_t n) {
  if (n > n_) *this = SavedOperand(tracker, storage_, n);
}

const uint16_t* SavedOperand::bits() const {
  TRI_CHECK(is16(), "SavedOperand::bits: the operand is stored in fp32");
  return reinterpret_cast<const uint16_t*>(buf_.data());
}

uint16_t* SavedOperand::bits() {
  TRI_CHECK(is16(), "SavedOperand::bits: the operand is stored in fp32");
  return reinterpret_cast<uint16_t*>(buf_.data());
}

kernels::ActOperand SavedOperand::operand() const {
  if (!is16()) return {buf_.data()};
  return {reinterpret_cast<const uint16_t*>(buf_.data()), storage_};
}

}  // namespace trident::nn
