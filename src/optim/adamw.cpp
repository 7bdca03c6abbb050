// AdamW over owned flat ranges, split at parameter boundaries so each range has one decay setting.
#include "optim/adamw.h"

#include <algorithm>
#include <utility>

#include "core/check.h"
#include "kernels/kernels.h"

namespace trident::optim {

namespace {

std::vector<AdamW::FlatRange> one_range(const nn::ParameterSet& params, int64_t begin, int64_t end) {
  return {{begin, end < 0 ? params.total_numel() : end}};
}

// kernels::adamw_update of n elements whose gradients start at element `at` of g.
void update(float* x, const GradsIn& g, int64_t at, float* m, float* v, int64_t n, float lr, const AdamWConfig& c,
            float wd, int64_t t, float grad_scale) {
  if (g.f32 || !g.bits) {
    kernels::adamw_update(x, g.f32 + at, m, v, n, lr, c.beta1, c.beta2, c.eps, wd, t, grad_scale);
  } else {
    kernels::adamw_update(x, g.bits + at, g.half, m, v, n, lr, c.beta1, c.beta2, c.eps, wd, t, grad_scale);
  }
}

}  // namespace

AdamW::AdamW(const nn::ParameterSet& params, MemoryTracker& tracker, const AdamWConfig& cfg,
             int64_t begin, int64_t end, std::unique_ptr<MomentStore> store)
    : AdamW(params, tracker, cfg, one_range(params, begin, end), std::move(store)) {}

AdamW::AdamW(const nn::ParameterSet& params, MemoryTracker& tracker, const AdamWConfig& cfg,
             const std::vector<FlatRange>& owned, std::unique_ptr<MomentStore> store)
    : cfg_(cfg), owned_(owned), store_(std::move(store)) {
  int64_t stored = 0, at = 0, prev_end = 0;
  for (const auto& [lo, hi] : owned_) {
    TRI_CHECK(lo >= prev_end && lo <= hi && hi <= params.total_numel(),
              "optimizer range [{}, {}) outside the {} parameters or not after the previous one", lo,
              hi, params.total_numel());
    prev_end = hi;
    for (const nn::ParamInfo& p : params.infos()) {
      const int64_t b = std::max(lo, p.offset), e = std::min(hi, p.offset + p.numel);
      if (b >= e || p.frozen) continue;
      const int64_t local = at + (b - lo), grad = p.grad_offset + (b - p.offset);
      if (!ranges_.empty() && ranges_.back().decay == p.weight_decay && ranges_.back().end == local &&
          ranges_.back().flat + (ranges_.back().end - ranges_.back().begin) == b &&
          ranges_.back().grad + (ranges_.back().end - ranges_.back().begin) == grad) {
        ranges_.back().end = local + (e - b);
      } else {
        ranges_.push_back({local, local + (e - b), b, grad, p.weight_decay, stored});
      }
      stored += e - b;
    }
    at += hi - lo;
  }
  if (!store_) store_ = make_memory_moment_store(tracker, stored);
  TRI_CHECK(store_->size() == stored, "moment store holds {} elements, the range's trained ones {}",
            store_->size(), stored);
  // A store holding the values holds every owned element (its index is the owned index).
  TRI_CHECK(!store_->holds_values() || stored == at,
            "--offload optimizer+params keeps the parameter shard with the moments, one entry per element, "
            "and this run has {} frozen elements (a LoRA base) among its {}: use --offload optimizer",
            at - stored, at);
}

int64_t AdamW::moment_count(const nn::ParameterSet& params, int64_t begin, int64_t end) {
  return moment_count(params, one_range(params, begin, end));
}

int64_t AdamW::moment_count(const nn::ParameterSet& params, const std::vector<FlatRange>& owned) {
  int64_t n = 0;
  for (const auto& [begin, end] : owned) {
    for (const nn::ParamInfo& p : params.infos()) {
      if (!p.frozen) n += std::max<int64_t>(0, std::min(end, p.offset + p.numel) - std::max(begin, p.offset));
    }
  }
  return n;
}

int64_t AdamW::store_index(int64_t flat) const {
  for (const Range& r : ranges_) {
    if (flat >= r.flat && flat < r.flat + (r.end - r.begin)) return r.store + (flat - r.flat);
  }
  TRI_CHECK(false, "flat element {} is not a trained element of the optimizer's ranges", flat);
  return -1;
}

AdamW::FlatRange AdamW::owned_part(int64_t lo, int64_t hi) const {
  FlatRange part{lo, lo};
  for (const auto& [b, e] : owned_) {
    const int64_t x = std::max(lo, b), y = std::min(hi, e);
    if (x >= y) continue;
    TRI_CHECK(part.first == part.second, "flat range [{}, {}) meets more than one optimizer range", lo, hi);
    part = {x, y};
  }
  return part;
}

void AdamW::step(const ValuesAt& values, GradsIn grads, float lr, float grad_scale, At grads_at,
                 const BlockDone& done) {
  TRI_CHECK(!store_->holds_values(), "AdamW::step: a moment store holding the values takes no other values");
  ++t_;
  store_->update([&](const MomentStore::Block& blk) {
    const int64_t off = blk.begin, n = blk.count;
    for (const Range& r : ranges_) {
      const int64_t b = std::max(r.store, off), e = std::min(r.store + (r.end - r.begin), off + n);
      for (int64_t i = b; i < e;) {
        const int64_t local = r.begin + (i - r.store), flat = r.flat + (i - r.store);
        const auto [x, k] = values(flat, e - i, blk);
        TRI_CHECK(x != nullptr && k >= 1 && k <= e - i, "AdamW::step: no values for flat element {}", flat);
        update(x, grads, grads_at == At::kFlat ? flat : local, blk.m + (i - off), blk.v + (i - off), k, lr, cfg_,
               r.decay ? static_cast<float>(cfg_.weight_decay) : 0.0f, t_, grad_scale);
        i += k;
      }
    }
    if (done) done(blk);
  });
}

void AdamW::step(float* values, GradsIn grads, float lr, float grad_scale, At values_at, At grads_at) {
  ++t_;
  // Each block of the store meets the ranges it overlaps (in store indices: frozen parameters
  // between ranges have none); the update is elementwise, so any split gives the same bits as
  // one pass.
  // With --offload optimizer+params the values come with the moments (w, in store order, which
  // is then the owned order) and `values` is unused.
  TRI_CHECK(store_->holds_values() || store_->value_count() == 0,
            "AdamW::step: the store holds some elements' values (a sharded master): use the ValuesAt step");
  store_->update([&](const MomentStore::Block& blk) {
    const int64_t off = blk.begin, n = blk.count;
    float* m = blk.m;
    float* v = blk.v;
    float* w = blk.w;
    for (const Range& r : ranges_) {
      const int64_t b = std::max(r.store, off), e = std::min(r.store + (r.end - r.begin), off + n);
      if (b >= e) continue;
      const int64_t local = r.begin + (b - r.store), flat = r.flat + (b - r.store);
      float* x = w ? w + (b - off) : values + (values_at == At::kFlat ? flat : local);
      update(x, grads, grads_at == At::kFlat ? r.grad + (b - r.store) : local, m + (b - off), v + (b - off), e - b, lr,
             cfg_, r.decay ? static_cast<float>(cfg_.weight_decay) : 0.0f, t_, grad_scale);
    }
  });
}

}  // namespace trident::optim
