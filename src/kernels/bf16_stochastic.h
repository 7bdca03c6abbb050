// Stochastic fp32 -> bf16 rounding of whole arrays with counter-based random bits (the bf16
// weight copy's --stochastic-rounding, nn/bf16_weights.h). Element i of an array whose first
// element has logical index `first` is rounded by float_to_bf16_stochastic (kernels/bf16.h)
// with the 16 bits PhiloxRoundingBits(s).at(first + i): one Philox4x32-10 block (core/rng.h)
// per 8 consecutive indices,
//   block = index / 8:  philox4x32({block lo, block hi, counter_hi lo, counter_hi hi}, key)
//   bits  = 16-bit half (index & 1) of 32-bit word ((index / 2) & 3),
// so the result depends only on (key, counter_hi, logical index): never on where an array
// starts, how it is split into calls or threads, or which path ran.
//
// Two paths, the same bits for every element: AVX-512F (16 Philox blocks per pass, one per
// lane, = 128 elements; chosen at run time where the CPU has AVX-512F) and the scalar one
// (the fallback, and the reference the unit test compares with).
#pragma once

#include <cstdint>

#include "kernels/bf16.h"

namespace trident::kernels {

struct PhiloxStream {
  uint64_t key = 0;         // the Philox key (2 words)
  uint64_t counter_hi = 0;  // the counter's upper two words
};

// The 16 random bits of logical index `index` (in the low half of the result), one Philox
// block cached: indices that come in order cost one block per 8 of them.
class PhiloxRoundingBits {
 public:
  explicit PhiloxRoundingBits(const PhiloxStream& s) : s_(s) {}
  uint32_t at(uint64_t index);

 private:
  PhiloxStream s_;
  uint64_t block_ = 0;
  bool valid_ = false;
  uint32_t words_[4] = {};
};

// out[i] = stochastic bf16 of in[i] with the bits of index first + i, i in [0, n). Single
// threaded (callers split arrays into blocks themselves). Runtime-dispatched.
void round_to_bf16_stochastic(bf16_t* out, const float* in, int64_t n, uint64_t first, const PhiloxStream& s);
// The scalar path, always.
void round_to_bf16_stochastic_scalar(bf16_t* out, const float* in, int64_t n, uint64_t first, const PhiloxStream& s);

// Whether round_to_bf16_stochastic takes the AVX-512 path on this CPU (and is not forced
// scalar); force_scalar_stochastic_rounding(true) makes it take the scalar one (benchmarks
// and tests measure and compare both in one process).
bool stochastic_rounding_vectorised();
void force_scalar_stochastic_rounding(bool on);

}  // namespace trident::kernels
