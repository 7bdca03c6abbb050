// The gradient shard in fp32 or 16 bits (see grad_shard.h).
#include "parallel/grad_shard.h"

#include <cstring>
#include <utility>

#include "core/async_file_io.h"  // detail::allocate_zeroed, free_zeroed
#include "core/check.h"
#include "kernels/kernels.h"

namespace trident::parallel {

GradShard::GradShard(MemoryTracker& tracker, int64_t numel, GradDType dtype)
    : numel_(numel), dtype_(dtype), tracker_(&tracker) {
  TRI_CHECK(numel >= 0, "gradient shard of {} elements", numel);
  if (dtype == GradDType::kFp32) {
    f32_ = FloatBuffer(tracker, MemCategory::kGradients, static_cast<std::size_t>(numel));
    return;
  }
  if (numel == 0) return;
  alloc_bytes_ = (static_cast<std::size_t>(numel) * sizeof(uint16_t) + 63) / 64 * 64;
  bits_ = static_cast<uint16_t*>(detail::allocate_zeroed(alloc_bytes_, 64));
  if (!bits_) {
    TRI_FAIL("out of memory allocating {} for the {}-bit gradient shard", format_bytes(static_cast<double>(alloc_bytes_)), 16);
  }
  tracker.add(MemCategory::kGradients, static_cast<std::size_t>(numel) * sizeof(uint16_t));
}

GradShard& GradShard::operator=(GradShard&& o) noexcept {
  if (this != &o) {
    reset();
    f32_ = std::move(o.f32_);
    bits_ = std::exchange(o.bits_, nullptr);
    alloc_bytes_ = std::exchange(o.alloc_bytes_, 0);
    numel_ = std::exchange(o.numel_, 0);
    dtype_ = o.dtype_;
    tracker_ = std::exchange(o.tracker_, nullptr);
  }
  return *this;
}

void GradShard::reset() {
  f32_.reset();
  if (bits_) {
    detail::free_zeroed(bits_, alloc_bytes_);
    if (tracker_) tracker_->release(MemCategory::kGradients, static_cast<std::size_t>(numel_) * sizeof(uint16_t));
  }
  bits_ = nullptr;
  alloc_bytes_ = 0;
  numel_ = 0;
}

void GradShard::zero() {
  if (dtype_ == GradDType::kFp32) return f32_.zero();
  if (bits_) std::memset(bits_, 0, static_cast<std::size_t>(numel_) * sizeof(uint16_t));  // +0 in both formats
}

void GradShard::fold(int64_t at, const float* r, int64_t n) {
  TRI_CHECK(at >= 0 && n >= 0 && at + n <= numel_, "gradient shard range [{}, {}) outside its {} elements", at,
            at + n, numel_);
  if (dtype_ == GradDType::kFp32) {
    float* acc = f32_.data() + at;
    for (int64_t i = 0; i < n; ++i) acc[i] += r[i];
    return;
  }
  const kernels::Half h = half_of(dtype_);
  uint16_t* acc = bits_ + at;
  for (int64_t i = 0; i < n; ++i) acc[i] = kernels::round_half(h, kernels::widen_half(h, acc[i]) + r[i]);
}

void GradShard::read(int64_t at, int64_t n, float* out) const {
  TRI_CHECK(at >= 0 && n >= 0 && at + n <= numel_, "gradient shard range [{}, {}) outside its {} elements", at,
            at + n, numel_);
  if (dtype_ == GradDType::kFp32) {
    std::memcpy(out, f32_.data() + at, static_cast<std::size_t>(n) * sizeof(float));
  } else {
    kernels::widen_half(half_of(dtype_), bits_ + at, n, out);
  }
}

void GradShard::write(int64_t at, int64_t n, const float* in) {
  TRI_CHECK(at >= 0 && n >= 0 && at + n <= numel_, "gradient shard range [{}, {}) outside its {} elements", at,
            at + n, numel_);
  if (dtype_ == GradDType::kFp32) {
    std::memcpy(f32_.data() + at, in, static_cast<std::size_t>(n) * sizeof(float));
    return;
  }
  const kernels::Half h = half_of(dtype_);
  for (int64_t i = 0; i < n; ++i) bits_[at + i] = kernels::round_half(h, in[i]);
}

double GradShard::sum_squares(int64_t at, int64_t n) const {
  if (dtype_ == GradDType::kFp32) return kernels::sum_squares(f32_.data() + at, n);
  return kernels::sum_squares(bits_ + at, half_of(dtype_), n);
}

optim::GradsIn GradShard::grads() const {
  if (dtype_ == GradDType::kFp32) return optim::GradsIn(f32_.data());
  return optim::GradsIn(bits_, half_of(dtype_));
}

}  // namespace trident::parallel
