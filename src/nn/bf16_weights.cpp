// Rounding the fp32 master weights into their bf16 copy (see bf16_weights.h).
#include "nn/bf16_weights.h"

#include <algorithm>

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

Bf16WeightCopy& Bf16WeightCopy::operator=(Bf16WeightCopy&& o) noexcept {
  if (this == &o) return *this;
  reset();
  buf_ = std::move(o.buf_);
  tracker_ = o.tracker_;
  mm_ = o.mm_;
  src_ = o.src_;
  o.buf_.clear();
  o.tracker_ = nullptr;
  o.mm_ = nullptr;
  o.src_ = nullptr;
  return *this;
}

void Bf16WeightCopy::fill(MemoryTracker& tracker, kernels::MatmulEngine& mm, const ParameterSet& ps, int64_t lo,
                          int64_t hi, const float* src, const WeightRounding& r) {
  unregister();
  const auto n = static_cast<std::size_t>(hi - lo);
  if (n != buf_.size() || tracker_ != &tracker) {
    reset();
    buf_.resize(n);
    buf_.shrink_to_fit();
    tracker_ = &tracker;
    tracker_->add(MemCategory::kParameters, bytes());
  }
  if (n == 0) return;
  round_weights(ps, lo, hi, src, buf_.data(), r);
  mm.add_weight_copy(src, buf_.data(), static_cast<int64_t>(n));
  mm_ = &mm;
  src_ = src;
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
  buf_ = {};
}

}  // namespace trident::nn
