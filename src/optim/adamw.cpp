// AdamW over flat ranges, split at parameter boundaries so each range has one decay setting.
#include "optim/adamw.h"

#include <algorithm>

#include "core/check.h"
#include "kernels/kernels.h"

namespace trident::optim {

AdamW::AdamW(const nn::ParameterSet& params, MemoryTracker& tracker, const AdamWConfig& cfg,
             int64_t begin, int64_t end)
    : cfg_(cfg), begin_(begin), end_(end < 0 ? params.total_numel() : end) {
  TRI_CHECK(begin_ >= 0 && begin_ <= end_ && end_ <= params.total_numel(),
            "optimizer range [{}, {}) outside the {} parameters", begin_, end_, params.total_numel());
  for (const nn::ParamInfo& p : params.infos()) {
    const int64_t b = std::max(begin_, p.offset), e = std::min(end_, p.offset + p.numel);
    if (b >= e) continue;
    if (!ranges_.empty() && ranges_.back().decay == p.weight_decay && ranges_.back().end == b - begin_) {
      ranges_.back().end = e - begin_;
    } else {
      ranges_.push_back({b - begin_, e - begin_, p.weight_decay});
    }
  }
  const auto n = static_cast<std::size_t>(end_ - begin_);
  m_ = FloatBuffer(tracker, MemCategory::kOptimizerState, n);
  v_ = FloatBuffer(tracker, MemCategory::kOptimizerState, n);
}

void AdamW::step(float* values, const float* grads, float lr, float grad_scale) {
  ++t_;
  for (const Range& r : ranges_) {
    kernels::adamw_update(values + r.begin, grads + r.begin, m_.data() + r.begin,
                          v_.data() + r.begin, r.end - r.begin, lr, cfg_.beta1, cfg_.beta2,
                          cfg_.eps, r.decay ? cfg_.weight_decay : 0.0f, t_, grad_scale);
  }
}

}  // namespace trident::optim
