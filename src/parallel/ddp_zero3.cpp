// ZeRO-3's side of DataParallel (see ddp_reducer.h): gathering each layer group's parameters
// before its forward and backward (with prefetch and the bf16 weight copies), releasing them,
// and the persistent shard's values: read, written, initialised and optionally offloaded.
#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "core/timer.h"
#include "kernels/kernels.h"
#include "parallel/ddp_reducer.h"

namespace trident::parallel {

std::vector<int> DataParallel::values_needed(int g, bool backward) const {
  // The embedding backward reads no parameter values (lookups' gradients need only the ids).
  if (backward && g == embed_group_) return {};
  std::vector<int> v{g};
  if (g == head_group_ && tied_group_ >= 0 && tied_group_ != g) v.push_back(tied_group_);
  return v;
}

void DataParallel::issue_gather(int g) {
  Gathered& s = gathered_[static_cast<std::size_t>(g)];
  if (s.state != 0) return;
  const int64_t gb = params_.group_begin(g), ge = params_.group_end(g);
  s.buf = FloatBuffer(tracker_, MemCategory::kParameters, static_cast<std::size_t>(ge - gb));
  // Each ZeRO segment of the group (dense layers: one; an MoE layer's experts: their own, over
  // edp) is gathered over its group.
  s.works.clear();
  // The shard: in memory, or this group's slice as read from the offload file (shard index i
  // at shard[i]).
  TRI_CHECK(!options_.offload_values || value_store_, "ZeRO-3 values offloaded but no store attached yet");
  const float* shard = shard_values_.data();
  if (value_store_) {
    const auto [first, last] = group_shard_[static_cast<std::size_t>(g)];
    prefetch(g);
    shard = last > first ? reads_[static_cast<std::size_t>(g)]->data() - first : nullptr;
  }
  for (const ShardSegment& seg : layout_.segments) {
    const int64_t lo = std::max(gb, seg.lo), hi = std::min(ge, seg.hi);
    if (lo >= hi) continue;
    const auto [a, b] = layout_.mine(lo, hi);
    const std::span<const float> in(b > a ? shard + layout_.index(a) : nullptr, static_cast<std::size_t>(b - a));
    const std::span<float> out(s.buf.data() + (lo - gb), static_cast<std::size_t>(hi - lo));
    comm::Communicator& group = group_of(seg);
    if (group.size() == 1) {
      std::copy(in.begin(), in.end(), out.begin());
      continue;
    }
    s.works.push_back(group.all_gather_v(in, out, std::span<const int64_t>(seg.counts_of(lo, hi))));
  }
  for (int id = 0; id < params_.size(); ++id) {
    const nn::ParamInfo& p = params_.info(id);
    // A packed base matrix (QLoRA) is not in the flat buffers: its pointer is the packed base's.
    if (p.group == g && !p.packed) params_.set_data_ptr(id, s.buf.data() + (p.offset - gb));
  }
  s.state = 1;
  if (s.works.empty() && value_store_) reads_[static_cast<std::size_t>(g)].reset();  // copied already
}

void DataParallel::prefetch(int g) {
  auto& r = reads_[static_cast<std::size_t>(g)];
  const auto [first, last] = group_shard_[static_cast<std::size_t>(g)];
  if (!r && last > first && gathered_[static_cast<std::size_t>(g)].state == 0) {
    r = value_store_->prefetch(2, first, last - first);
  }
}

void DataParallel::acquire(int g) {
  issue_gather(g);
  Gathered& s = gathered_[static_cast<std::size_t>(g)];
  if (s.state == 1) {
    wait_all(s.works);
    s.state = 2;
    if (value_store_) reads_[static_cast<std::size_t>(g)].reset();  // the gather has its copy
  }
  if (copy_mm_ != nullptr && !s.copy.registered()) {
    const int64_t gb = params_.group_begin(g), ge = params_.group_end(g);
    if (ge > gb) s.copy.fill(tracker_, *copy_mm_, params_, gb, ge, s.buf.data(), rounding_);
  }
}

void DataParallel::begin_weight_copies(kernels::MatmulEngine& mm, const nn::WeightRounding& r) {
  end_weight_copies();
  copy_mm_ = &mm;
  rounding_ = r;
}

void DataParallel::end_weight_copies() {
  for (Gathered& s : gathered_) s.copy.reset();
  copy_mm_ = nullptr;
}

void DataParallel::release(int g) {
  Gathered& s = gathered_[static_cast<std::size_t>(g)];
  if (s.state == 0) return;
  if (s.state == 1) wait_all(s.works);
  if (value_store_) reads_[static_cast<std::size_t>(g)].reset();
  s.copy.reset();
  s.buf.reset();
  s.state = 0;
  for (int id = 0; id < params_.size(); ++id) {
    if (params_.info(id).group == g && !params_.info(id).packed) params_.set_data_ptr(id, nullptr);
  }
}

void DataParallel::keep_only(const std::vector<int>& keep) {
  for (int g = 0; g < static_cast<int>(gathered_.size()); ++g) {
    if (std::find(keep.begin(), keep.end(), g) == keep.end()) release(g);
  }
}

void DataParallel::release_all() {
  keep_only({});
  for (auto& r : reads_) r.reset();  // read ahead and not gathered (the values change next)
}

void DataParallel::read_shard_values(int id, float* local) const {
  const nn::ParamInfo& p = params_.info(id);
  std::fill(local, local + p.numel, 0.0f);
  const auto [lo, hi] = layout_.mine(p.offset, p.offset + p.numel);
  if (hi <= lo) return;
  TRI_CHECK(!options_.offload_values || value_store_, "ZeRO-3 values offloaded but no store attached yet");
  if (value_store_) {
    value_store_->read(2, layout_.index(lo), hi - lo, local + (lo - p.offset));
  } else {
    std::memcpy(local + (lo - p.offset), shard_values_.data() + layout_.index(lo),
                static_cast<std::size_t>(hi - lo) * sizeof(float));
  }
}

void DataParallel::write_shard_values(int id, const float* local) {
  const ShardPart part = shard_part(id);
  if (part.count > 0) write_shard_range(id, part.local_begin, part.count, local + part.local_begin);
}

DataParallel::ShardPart DataParallel::shard_part(int id) const {
  const nn::ParamInfo& p = params_.info(id);
  const auto [lo, hi] = layout_.mine(p.offset, p.offset + p.numel);
  if (hi <= lo) return {};
  return {lo - p.offset, hi - lo, layout_.index(lo)};
}

void DataParallel::write_shard_range(int id, int64_t first, int64_t count, const float* values) {
  const ShardPart part = shard_part(id);
  TRI_CHECK(first >= part.local_begin && count >= 0 && first + count <= part.local_begin + part.count,
            "{}: local elements [{}, {}) are not all in this rank's shard [{}, {})", params_.info(id).name, first,
            first + count, part.local_begin, part.local_begin + part.count);
  if (count == 0) return;
  TRI_CHECK(!options_.offload_values || value_store_, "ZeRO-3 values offloaded but no store attached yet");
  const int64_t at = part.shard_begin + (first - part.local_begin);
  if (value_store_) {
    value_store_->write(2, at, count, values);
  } else {
    std::memcpy(shard_values_.data() + at, values, static_cast<std::size_t>(count) * sizeof(float));
  }
}

void DataParallel::attach_value_store(optim::MomentStore& store) {
  TRI_CHECK(options_.zero >= 3, "--offload optimizer+params offloads ZeRO-3's parameter shards; this "
            "reducer runs ZeRO-{}: add --zero 3", options_.zero);
  TRI_CHECK(options_.offload_values && value_store_ == nullptr,
            "attach_value_store needs DataParallelOptions::offload_values, once");
  TRI_CHECK(store.holds_values() && store.size() == layout_.numel(),
            "the offload store holds {} elements{}, the ZeRO-3 shard {}", store.size(),
            store.holds_values() ? "" : " and no values", layout_.numel());
  release_all();
  // Whatever the flat buffer holds; normally it was never made (RankLayout allocates no flat
  // values under ZeRO-3: the file starts as zeros, then initialise or load after).
  if (!params_.values().empty()) {
    for (const ShardSegment& s : layout_.segments) {
      if (s.my_hi() > s.my_lo()) store.write(2, s.base, s.my_hi() - s.my_lo(), params_.values().data() + s.my_lo());
    }
  }
  params_.release_flat_values();
  value_store_ = &store;
  // Each group's shard elements are contiguous in shard order (shard order is flat order
  // within this rank's pieces, and a group is a flat range).
  group_shard_.assign(static_cast<std::size_t>(params_.num_groups()), FlatRange{0, 0});
  for (int g = 0; g < params_.num_groups(); ++g) {
    int64_t first = -1, last = -1;
    for (const ShardSegment& seg : layout_.segments) {
      const int64_t lo = std::max(params_.group_begin(g), seg.lo), hi = std::min(params_.group_end(g), seg.hi);
      if (lo >= hi) continue;
      const auto [a, b] = layout_.mine(lo, hi);
      if (b <= a) continue;
      if (first < 0) first = layout_.index(a);
      TRI_CHECK(last < 0 || layout_.index(a) == last, "group {}'s shard is not contiguous", g);
      last = layout_.index(a) + (b - a);
    }
    if (first >= 0) group_shard_[static_cast<std::size_t>(g)] = {first, last};
  }
  reads_.clear();
  reads_.resize(static_cast<std::size_t>(params_.num_groups()));
}

void DataParallel::initialize_shard(uint64_t seed) {
  TRI_CHECK(!options_.offload_values || value_store_, "ZeRO-3 values offloaded but no store attached yet");
  // In shard order, kChunk elements at a time (aligned to kChunk in shard indices: the offload
  // file's default block, so its writes are whole blocks, no read-modify-write), each chunk
  // drawn from the parameters it overlaps with the bits ParameterSet::initialize draws. Nothing
  // beyond the shard and one chunk is ever in memory (with the values offloaded, not even the
  // shard): the start-up never holds a whole parameter, let alone the whole model.
  constexpr int64_t kChunk = int64_t{1} << 20;
  FloatBuffer staging;
  if (value_store_ && layout_.numel() > 0) {
    staging = FloatBuffer(tracker_, MemCategory::kWorkspace, static_cast<std::size_t>(std::min(kChunk, layout_.numel())));
  }
  int id = 0;  // the first parameter that may overlap the chunk (both advance in flat order)
  for (const ShardSegment& seg : layout_.segments) {
    for (int64_t f = seg.my_lo(); f < seg.my_hi();) {
      const int64_t at = seg.base + (f - seg.my_lo());  // shard index of flat element f
      const int64_t len = std::min(seg.my_hi() - f, kChunk - at % kChunk);
      float* out = value_store_ ? staging.data() : shard_values_.data() + at;
      while (id < params_.size() && params_.info(id).offset + params_.info(id).numel <= f) ++id;
      for (int k = id; k < params_.size() && params_.info(k).offset < f + len; ++k) {
        const nn::ParamInfo& p = params_.info(k);
        const int64_t b = std::max(f, p.offset), e = std::min(f + len, p.offset + p.numel);
        if (b < e) params_.initialize_range(seed, k, b - p.offset, e - b, out + (b - f));
      }
      if (value_store_) value_store_->write(2, at, len, staging.data());
      f += len;
    }
  }
}

}  // namespace trident::parallel
