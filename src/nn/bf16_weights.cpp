// Rounding the fp32 master weights into their bf16 copy (see bf16_weights.h).
#include "nn/bf16_weights.h"

#include <algorithm>
#include <utility>

#include "core/async_file_io.h"  // detail::allocate_zeroed, free_zeroed
#include "core/check.h"
#include "core/rng.h"
#include "kernels/bf16_stochastic.h"
#include "kernels/parallel_blocks.h"
#include "nn/param_runs.h"

namespace trident::nn {
namespace {
// Keeps the rounding's streams apart from the initialisation's (same seed, same names).
constexpr uint64_t kRoundingSalt = 0x5352626631366d77ull;  // "SRbf16mw"

// The Philox stream of one parameter at (seed, step): kernels/bf16_stochastic.h's bits.
kernels::PhiloxStream rounding_stream(uint64_t seed, uint64_t step, uint64_t stream) {
  return {seed ^ kRoundingSalt, stream ^ (step * 0x9E3779B97F4A7C15ull)};
}
}  // namespace

uint32_t stochastic_rounding_bits(uint64_t seed, uint64_t step, uint64_t stream, uint64_t index) {
  return kernels::PhiloxRoundingBits(rounding_stream(seed, step, stream)).at(index);
}

void round_weights(const ParameterSet& ps, int64_t lo, int64_t hi, const float* src, kernels::bf16_t* dst,
                   const WeightRounding& r) {
  TRI_CHECK(0 <= lo && lo <= hi && hi <= ps.total_numel(), "round_weights: range [{}, {}) outside the {} elements",
            lo, hi, ps.total_numel());
  if (r.precision == kernels::Precision::kFp16) {
    TRI_CHECK(!r.stochastic, "round_weights: fp16 copies round to nearest only");
    return kernels::MatmulEngine::round_operand(kernels::Precision::kFp16, dst, src, hi - lo);
  }
  TRI_CHECK(r.precision == kernels::Precision::kBf16, "round_weights: fp32 weights are not rounded");
  if (!r.stochastic) return kernels::convert_to_bf16(dst, src, hi - lo);
  for (const ParamInfo& p : ps.infos()) {
    const int64_t a = std::max(lo, p.offset), b = std::min(hi, p.offset + p.numel);
    if (a >= b) continue;
    const kernels::PhiloxStream stream = rounding_stream(r.seed, r.step, fnv1a64(p.name));
    const float* in = src + (p.offset - lo);
    kernels::bf16_t* out = dst + (p.offset - lo);
    // Run by run (a replicated tensor is one; a shard one per chunk and outer index): each run
    // holds consecutive logical indices, rounded in parallel blocks on the vectorised path;
    // padding (zero) rounds to zero.
    for (const LocalRun& run : local_runs(p)) {
      const int64_t l0 = std::max(run.local, a - p.offset), l1 = std::min(run.local + run.length, b - p.offset);
      if (l0 >= l1) continue;
      if (run.logical < 0) {
        kernels::convert_to_bf16(out + l0, in + l0, l1 - l0);
        continue;
      }
      kernels::for_each_block(l1 - l0, [&](int64_t i0, int64_t i1) {
        const int64_t l = l0 + i0;
        kernels::round_to_bf16_stochastic(out + l, in + l, i1 - i0, static_cast<uint64_t>(run.logical + (l - run.local)),
                                          stream);
      });
    }
  }
}

namespace {
// What allocate_zeroed is given for n elements: whole cache lines.
std::size_t copy_alloc_bytes(std::size_t n) { return (n * sizeof(kernels::bf16_t) + 63) / 64 * 64; }
}  // namespace

Bf16WeightCopy& Bf16WeightCopy::operator=(Bf16WeightCopy&& o) noexcept {
  if (this == &o) return *this;
  reset();
  buf_ = std::exchange(o.buf_, nullptr);
  n_ = std::exchange(o.n_, 0);
  tracker_ = std::exchange(o.tracker_, nullptr);
  mm_ = std::exchange(o.mm_, nullptr);
  src_ = std::exchange(o.src_, nullptr);
  return *this;
}

void Bf16WeightCopy::fill(MemoryTracker& tracker, kernels::MatmulEngine& mm, const ParameterSet& ps, int64_t lo,
                          int64_t hi, const float* src, const WeightRounding& r) {
  const auto n = static_cast<std::size_t>(hi - lo);
  reserve(tracker, n);
  if (n == 0) return;
  round_weights(ps, lo, hi, src, buf_, r);
  register_with(mm, src);
}

kernels::bf16_t* Bf16WeightCopy::reserve(MemoryTracker& tracker, std::size_t n) {
  unregister();
  if (n != n_ || tracker_ != &tracker) {
    reset();
    if (n > 0) {
      buf_ = static_cast<kernels::bf16_t*>(detail::allocate_zeroed(copy_alloc_bytes(n), 64));
      TRI_CHECK(buf_ != nullptr, "out of memory allocating the bf16 weight copy ({})",
                format_bytes(static_cast<double>(n * sizeof(kernels::bf16_t))));
    }
    n_ = n;
    tracker_ = &tracker;
    tracker_->add(MemCategory::kParameters, bytes());
  }
  return buf_;
}

void Bf16WeightCopy::register_with(kernels::MatmulEngine& mm, const float* key) {
  unregister();
  if (n_ == 0) return;
  mm.add_weight_copy(key, buf_, static_cast<int64_t>(n_));
  mm_ = &mm;
  src_ = key;
}

void Bf16WeightCopy::unregister() {
  if (mm_ != nullptr) mm_->remove_weight_copy(src_);
  mm_ = nullptr;
  src_ = nullptr;
}

void Bf16WeightCopy::reset() {
  unregister();
  if (tracker_ != nullptr) tracker_->release(MemCategory::kParameters, bytes());
  tracker_ = nullptr;
  if (buf_ != nullptr) detail::free_zeroed(buf_, copy_alloc_bytes(n_));
  buf_ = nullptr;
  n_ = 0;
}

}  // namespace trident::nn
