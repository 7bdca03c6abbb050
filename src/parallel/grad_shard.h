// Gradients at rest in the run's gradient dtype (grad_dtype.h): ZeRO-2/3's reduced gradient
// shard in shard order, or ZeRO-0/1's flat gradient buffer under 16-bit gradients (ddp_reducer.h),
// stored as fp32, or 16-bit words (2 bytes an element, accounted as
// `gradients`). Every write is one rounding of an fp32 value: fold() adds a micro-batch's
// reduced fp32 part to the stored value in fp32 and rounds the sum once (so with one
// micro-batch whose reduced part is already 16-bit exact, e.g. a bf16 reduction into bf16
// storage, the store holds exactly that part), write() rounds a value. Readers widen exactly.
#pragma once

#include <cstdint>

#include "core/memory.h"
#include "optim/adamw.h"
#include "parallel/grad_dtype.h"

namespace trident::parallel {

class GradShard {
 public:
  GradShard() = default;
  GradShard(MemoryTracker& tracker, int64_t numel, GradDType dtype);
  GradShard(GradShard&& o) noexcept { *this = std::move(o); }
  GradShard& operator=(GradShard&& o) noexcept;
  GradShard(const GradShard&) = delete;
  GradShard& operator=(const GradShard&) = delete;
  ~GradShard() { reset(); }

  bool empty() const { return numel_ == 0; }
  int64_t numel() const { return numel_; }
  GradDType dtype() const { return dtype_; }
  void zero();
  // [at, at + n) = round(stored + r[i]), the sum in fp32 (gradient accumulation over micro-batches).
  void fold(int64_t at, const float* r, int64_t n);
  // out[i] = the stored [at + i], widened; write: stored [at + i] = round(in[i]).
  void read(int64_t at, int64_t n, float* out) const;
  void write(int64_t at, int64_t n, const float* in);
  // Sum of squares in double of [at, at + n) (kernels::sum_squares: the same bits as of the widened values).
  double sum_squares(int64_t at, int64_t n) const;
  // The whole shard as AdamW reads it (from shard index 0).
  optim::GradsIn grads() const;

 private:
  void reset();
  FloatBuffer f32_;              // kFp32
  uint16_t* bits_ = nullptr;     // 16-bit: numel_ words
  std::size_t alloc_bytes_ = 0;  // of bits_
  int64_t numel_ = 0;
  GradDType dtype_ = GradDType::kFp32;
  MemoryTracker* tracker_ = nullptr;
};

}  // namespace trident::parallel
