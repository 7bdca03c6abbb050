// Rounding the fp32 master weights into their bf16 copy (see bf16_weights.h).
#include "nn/bf16_weights.h"

#include <algorithm>
#include <array>

#include "core/check.h"
#include "core/rng.h"
#include "kernels/parallel_blocks.h"

namespace trident::nn {
namespace {
// Keeps the rounding's streams apart from the initialisation's (same seed, same names).
constexpr uint64_t kRoundingSalt = 0x5352626631366d77ull;  // "SRbf16mw"

// The bits of consecutive indices, one Philox block per 8 of them (cached: elements come in
// index order within a run).
class RoundingBits {
 public:
  RoundingBits(uint64_t seed, uint64_t step, uint64_t stream)
      : key_(seed ^ kRoundingSalt), counter_hi_(stream ^ (step * 0x9E3779B97F4A7C15ull)) {}
  uint32_t at(uint64_t index) {
    const uint64_t block = index >> 3;
    if (!valid_ || block != block_) {
      words_ = philox4x32({static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                           static_cast<uint32_t>(counter_hi_), static_cast<uint32_t>(counter_hi_ >> 32)},
                          {static_cast<uint32_t>(key_), static_cast<uint32_t>(key_ >> 32)});
      block_ = block;
      valid_ = true;
    }
    return (words_[(index >> 1) & 3] >> (16 * (index & 1))) & 0xFFFFu;
  }

 private:
  uint64_t key_, counter_hi_;
  uint64_t block_ = 0;
  bool valid_ = false;
  std::array<uint32_t, 4> words_{};
};
}  // namespace

uint32_t stochastic_rounding_bits(uint64_t seed, uint64_t step, uint64_t stream, uint64_t index) {
  return RoundingBits(seed, step, stream).at(index);
}

void round_weights(const ParameterSet& ps, int64_t lo, int64_t hi, const float* src, kernels::bf16_t* dst,
                   const WeightRounding& r) {
  TRI_CHECK(0 <= lo && lo <= hi && hi <= ps.total_numel(), "round_weights: range [{}, {}) outside the {} elements",
            lo, hi, ps.total_numel());
  if (!r.stochastic) return kernels::convert_to_bf16(dst, src, hi - lo);
  for (const ParamInfo& p : ps.infos()) {
    const int64_t a = std::max(lo, p.offset), b = std::min(hi, p.offset + p.numel);
    if (a >= b) continue;
    const uint64_t stream = fnv1a64(p.name);
    const float* in = src + (p.offset - lo);
    kernels::bf16_t* out = dst + (p.offset - lo);
    if (p.shard.is_full()) {  // local index = logical index: parallel, no index map
      kernels::for_each_block(b - a, [&](int64_t i0, int64_t i1) {
        RoundingBits bits(r.seed, r.step, stream);
        for (int64_t l = a - p.offset + i0; l < a - p.offset + i1; ++l) {
          out[l] = kernels::float_to_bf16_stochastic(in[l], bits.at(static_cast<uint64_t>(l)));
        }
      });
      continue;
    }
    RoundingBits bits(r.seed, r.step, stream);
    for_each_local_element(p, [&](int64_t l, int64_t g) {
      if (l < a - p.offset || l >= b - p.offset) return;
      out[l] = g < 0 ? kernels::float_to_bf16(in[l])
                     : kernels::float_to_bf16_stochastic(in[l], bits.at(static_cast<uint64_t>(g)));
    });
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
