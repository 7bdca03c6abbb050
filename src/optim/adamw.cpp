// AdamW over flat ranges, split at parameter boundaries so each range has one decay setting.
#include "optim/adamw.h"

#include <algorithm>
#include <utility>

#include "core/check.h"
#include "kernels/kernels.h"

namespace trident::optim {

AdamW::AdamW(const nn::ParameterSet& params, MemoryTracker& tracker, const AdamWConfig& cfg,
             int64_t begin, int64_t end, std::unique_ptr<MomentStore> store)
    : cfg_(cfg), begin_(begin), end_(end < 0 ? params.total_numel() : end), store_(std::move(store)) {
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
  if (!store_) store_ = make_memory_moment_store(tracker, end_ - begin_);
  TRI_CHECK(store_->size() == end_ - begin_, "moment store holds {} elements, the range {}",
            store_->size(), end_ - begin_);
}

void AdamW::step(float* values, const float* grads, float lr, float grad_scale) {
  ++t_;
  // Each block of the store meets the decay ranges it overlaps; the update is elementwise, so
  // any split gives the same bits as one pass.
  store_->update([&](int64_t off, int64_t n, float* m, float* v) {
    for (const Range& r : ranges_) {
      const int64_t b = std::max(r.begin, off), e = std::min(r.end, off + n);
      if (b >= e) continue;
      kernels::adamw_update(values + b, grads + b, m + (b - off), v + (b - off), e - b, lr,
                            cfg_.beta1, cfg_.beta2, cfg_.eps, r.decay ? cfg_.weight_decay : 0.0f,
                            t_, grad_scale);
    }
  });
}

}  // namespace trident::optim
