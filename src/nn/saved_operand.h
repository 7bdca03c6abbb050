// A saved activation that backward reads only as a matmul operand (the x of dW = x^T dY): a
// norm's output before the q|k|v / fc / gate|up projection, attention's output before the out
// projection, the MLP activation's output before the down projection. Under --precision
// bf16/fp16 every product rounds that operand to 16 bits anyway (kernels/matmul_engine.h), so
// it is stored as those 16 bits (half the bytes) and handed to the engine pre-rounded: the
// products, and so losses, gradients and weights, are bitwise those of fp32 storage. Under
// fp32 (or with 16-bit storage switched off, nn::Model::set_store_16bit_operands) it is the
// fp32 buffer it always was. Activations backward needs as values (norm inputs, the residual,
// pre-activations, qkv, the attention core) stay FloatBuffers.
#pragma once

#include <cstdint>

#include "core/memory.h"
#include "kernels/matmul_engine.h"

namespace trident::nn {

class SavedOperand {
 public:
  SavedOperand() = default;
  // n elements stored as `storage` (kFp32: floats; kBf16/kFp16: the engine's 16-bit words).
  SavedOperand(MemoryTracker& tracker, kernels::Precision storage, int64_t n);

  // Bytes the constructor allocates: the one formula the activation counts use.
  static int64_t bytes(kernels::Precision storage, int64_t n) {
    return storage == kernels::Precision::kFp32 ? 4 * n : 4 * ((n + 1) / 2);
  }

  bool is16() const { return storage_ != kernels::Precision::kFp32; }
  int64_t size() const { return n_; }
  // Where forward writes the fp32 values: the buffer itself (fp32), else `temp` (>= n floats),
  // which store() then rounds into the 16-bit buffer.
  float* target(float* temp) { return is16() ? temp : buf_.data(); }
  // Stores rows [0, n) of `values` (target()'s pointer); a no-op for fp32 storage.
  void store(const float* values, int64_t n);
  // Writes elements [at, at + n) from the fp32 `values` (rounded, or copied under fp32): for
  // operands filled piecewise (the MoE experts' routed rows, nn/moe_mlp.h).
  void put(int64_t at, const float* values, int64_t n);
  // Grows to at least n elements of the same storage (contents lost), tracked as before.
  void ensure(MemoryTracker& tracker, int64_t n);
  kernels::Precision storage() const { return storage_; }
  // The operand for the engine: fp32, or pre-rounded 16-bit words.
  kernels::ActOperand operand() const;
  // The 16-bit words (is16() only): the sequence-parallel gather and the expert-parallel
  // exchange move these; the mutable one receives words rounded elsewhere (nn/moe_mlp.cpp).
  const uint16_t* bits() const;
  uint16_t* bits();

 private:
  FloatBuffer buf_;  // 16-bit storage: (n + 1) / 2 floats' bytes holding n words
  kernels::Precision storage_ = kernels::Precision::kFp32;
  int64_t n_ = 0;
};

}  // namespace trident::nn
