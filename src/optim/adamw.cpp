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
  int64_t stored = 0;
  for (const nn::ParamInfo& p : params.infos()) {
    const int64_t b = std::max(begin_, p.offset), e = std::min(end_, p.offset + p.numel);
    if (b >= e || p.frozen) continue;
    if (!ranges_.empty() && ranges_.back().decay == p.weight_decay && ranges_.back().end == b - begin_) {
      ranges_.back().end = e - begin_;
    } else {
      ranges_.push_back({b - begin_, e - begin_, p.weight_decay, stored});
    }
    stored += e - b;
  }
  if (!store_) store_ = make_memory_moment_store(tracker, stored);
  TRI_CHECK(store_->size() == stored, "moment store holds {} elements, the range's trained ones {}",
            store_->size(), stored);
}

int64_t AdamW::moment_count(const nn::ParameterSet& params, int64_t begin, int64_t end) {
  if (end < 0) end = params.total_numel();
  int64_t n = 0;
  for (const nn::ParamInfo& p : params.infos()) {
    if (!p.frozen) n += std::max<int64_t>(0, std::min(end, p.offset + p.numel) - std::max(begin, p.offset));
  }
  return n;
}

int64_t AdamW::store_index(int64_t flat) const {
  const int64_t rel = flat - begin_;
  for (const Range& r : ranges_) {
    if (rel >= r.begin && rel < r.end) return r.store + (rel - r.begin);
  }
  TRI_CHECK(false, "flat element {} is not a trained element of the optimizer's range [{}, {})", flat, begin_, end_);
  return -1;
}

void AdamW::step(float* values, const float* grads, float lr, float grad_scale) {
  ++t_;
  // Each block of the store meets the ranges it overlaps (in store indices: frozen parameters
  // between ranges have none); the update is elementwise, so any split gives the same bits as
  // one pass.
  store_->update([&](int64_t off, int64_t n, float* m, float* v) {
    for (const Range& r : ranges_) {
      const int64_t b = std::max(r.store, off), e = std::min(r.store + (r.end - r.begin), off + n);
      if (b >= e) continue;
      const int64_t flat = r.begin + (b - r.store);
      kernels::adamw_update(values + flat, grads + flat, m + (b - off), v + (b - off), e - b, lr,
                            cfg_.beta1, cfg_.beta2, cfg_.eps, r.decay ? cfg_.weight_decay : 0.0f,
                            t_, grad_scale);
    }
  });
}

}  // namespace trident::optim
