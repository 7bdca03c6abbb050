// The bf16 copy of the weights that a --precision bf16 model's matmuls read (issue 13): rounded
// from the fp32 master values once per optimizer step (parallel/train_step.cpp: before the
// step's first forward, i.e. after the previous update, after init / load / resume; under ZeRO-3
// once per layer group gather, parallel/ddp_reducer.cpp) instead of once per product. Nearest
// even gives the bits the matmul engine would have made per call, so results are bitwise those
// of converting per call; --stochastic-rounding rounds each element up or down at random, with
// the randomness keyed by (seed, step, parameter name, logical index), so every layout rounds
// every logical element alike. The fp32 values stay the master (the optimizer updates them,
// checkpoints hold them); the copy is memory accounted as `parameters` (2 bytes an element).
#pragma once

#include <cstdint>
#include <vector>

#include "core/memory.h"
#include "kernels/bf16.h"
#include "kernels/matmul_engine.h"
#include "nn/parameters.h"

namespace trident::nn {

struct WeightRounding {
  bool stochastic = false;
  uint64_t seed = 0;  // the run's seed
  uint64_t step = 0;  // optimizer updates applied before the copy is made
  // The 16 bits: bf16, or fp16 (--precision fp16, nearest only: the engine's per-product
  // rounding; a persistent copy exists for it under ZeRO-1/2's sharded master only).
  kernels::Precision precision = kernels::Precision::kBf16;
};

// The random bits that round logical element `index` of parameter `name` (stream fnv1a64(name))
// at (seed, step): 16 of them, drawn from a Philox block shared by 8 consecutive indices.
uint32_t stochastic_rounding_bits(uint64_t seed, uint64_t step, uint64_t stream, uint64_t index);

// dst[i - lo] = the bf16 (r.precision fp16: the fp16 bits) of src[i - lo] for the flat
// elements [lo, hi) of `ps` (src: values starting at element lo): nearest even, or (bf16)
// stochastically with r's key (padding elements, outside every logical tensor, are zero and
// round to zero either way).
void round_weights(const ParameterSet& ps, int64_t lo, int64_t hi, const float* src, kernels::bf16_t* dst,
                   const WeightRounding& r);

// A bf16 copy of the flat range [lo, hi) of a parameter set's values, registered with a matmul
// engine while filled. The buffer is kept between fills of the same size (one allocation for a
// run) and freed by reset() or the destructor. From 1 MiB it is mapped straight from the kernel
// and unmapped when freed, as FloatBuffer's are (core/memory.cpp), so the process's RSS follows
// the tracker: through malloc, ZeRO-3's per-group copies, made and freed at every gather, kept
// glibc's heap pages resident (docs/memory.md, "A model larger than memory").
class Bf16WeightCopy {
 public:
  Bf16WeightCopy() = default;
  ~Bf16WeightCopy() { reset(); }
  Bf16WeightCopy(Bf16WeightCopy&& o) noexcept { *this = std::move(o); }
  Bf16WeightCopy& operator=(Bf16WeightCopy&& o) noexcept;
  Bf16WeightCopy(const Bf16WeightCopy&) = delete;
  Bf16WeightCopy& operator=(const Bf16WeightCopy&) = delete;

  // Rounds src (the values of elements [lo, hi) of ps) into the copy and registers it with mm.
  void fill(MemoryTracker& tracker, kernels::MatmulEngine& mm, const ParameterSet& ps, int64_t lo, int64_t hi,
            const float* src, const WeightRounding& r);
  // The buffer of n elements, unregistered, for a caller that fills it itself (its contents are
  // kept when it already holds n elements with this tracker; otherwise zeros).
  kernels::bf16_t* reserve(MemoryTracker& tracker, std::size_t n);
  // Registers the buffer with mm as the copy of the fp32 range that starts at `key`.
  void register_with(kernels::MatmulEngine& mm, const float* key);
  // Unregisters (the products convert per call again); the buffer stays for the next fill.
  void unregister();
  // Unregisters and frees.
  void reset();
  bool registered() const { return mm_ != nullptr; }
  const kernels::bf16_t* data() const { return buf_; }
  std::size_t size() const { return n_; }
  std::size_t bytes() const { return n_ * sizeof(kernels::bf16_t); }

 private:
  kernels::bf16_t* buf_ = nullptr;
  std::size_t n_ = 0;  // elements
  MemoryTracker* tracker_ = nullptr;
  kernels::MatmulEngine* mm_ = nullptr;
  const float* src_ = nullptr;
};

}  // namespace trident::nn
