// ZeRO-1/2's sharded fp32 master and its persistent 16-bit copy (see zero_master.h).
#include "parallel/zero_master.h"

#include <algorithm>
#include <cstring>

#include "core/check.h"

namespace trident::parallel {

bool shards_master(int zero, kernels::Precision precision, bool lora) {
  return (zero == 1 || zero == 2) && precision != kernels::Precision::kFp32 && !lora;
}

std::vector<FlatRange> operand_only_runs(const nn::ParameterSet& ps) {
  std::vector<FlatRange> runs;
  for (const nn::ParamInfo& p : ps.infos()) {
    if (!p.operand_only || p.numel == 0) continue;
    if (!runs.empty() && runs.back().second == p.offset) {
      runs.back().second += p.numel;
    } else {
      runs.emplace_back(p.offset, p.offset + p.numel);
    }
  }
  return runs;
}

int64_t operand_only_elems(const nn::ParameterSet& ps, const std::vector<FlatRange>& pieces) {
  int64_t n = 0;
  for (const auto& [a, b] : operand_only_runs(ps)) {
    for (const auto& [lo, hi] : pieces) n += std::max<int64_t>(0, std::min(b, hi) - std::max(a, lo));
  }
  return n;
}

namespace {
// [0, total) without `runs` (ascending, disjoint).
std::vector<FlatRange> complement(const std::vector<FlatRange>& runs, int64_t total) {
  std::vector<FlatRange> out;
  int64_t at = 0;
  for (const auto& [lo, hi] : runs) {
    if (lo > at) out.emplace_back(at, lo);
    at = hi;
  }
  if (total > at) out.emplace_back(at, total);
  return out;
}
}  // namespace

ShardedMaster::ShardedMaster(nn::ParameterSet& ps, const ShardLayout& layout, MemoryTracker& tracker, bool offloaded)
    : ps_(ps), layout_(layout), tracker_(tracker), operand_(operand_only_runs(ps)),
      run_of_(static_cast<std::size_t>(ps.size()), -1) {
  TRI_CHECK(!ps.values().empty() || ps.total_numel() == 0,
            "the sharded fp32 master is taken from the flat values, which were not allocated");
  int64_t at = 0;
  for (int id = 0; id < ps.size(); ++id) {
    if (!holds(id)) continue;
    const nn::ParamInfo& p = ps.info(id);
    const auto [lo, hi] = layout.mine(p.offset, p.offset + p.numel);  // a parameter lies in one segment
    if (hi <= lo) continue;
    run_of_[static_cast<std::size_t>(id)] = static_cast<int>(runs_.size());
    runs_.push_back({id, lo, hi, at});
    at += hi - lo;
  }
  numel_ = at;
  if (offloaded) return;  // the flat values keep the master until attach_store
  master_ = FloatBuffer(tracker, MemCategory::kParameters, static_cast<std::size_t>(at));
  for (const Run& r : runs_) {
    std::memcpy(master_.data() + r.at, ps.values().data() + r.lo, static_cast<std::size_t>(r.hi - r.lo) * sizeof(float));
  }
  ps.keep_flat_values(complement(operand_, ps.total_numel()));
}

optim::ValueRuns ShardedMaster::store_runs() const {
  optim::ValueRuns out;
  for (const Run& r : runs_) {
    const int64_t lo = layout_.index(r.lo), hi = lo + (r.hi - r.lo);
    if (!out.empty() && out.back().second == lo) {
      out.back().second = hi;
    } else {
      out.emplace_back(lo, hi);
    }
  }
  return out;
}

void ShardedMaster::attach_store(optim::MomentStore& store) {
  TRI_CHECK(store_ == nullptr && master_.empty(),
            "the sharded fp32 master is attached to an offload store once, and only when made for one");
  TRI_CHECK(store.value_count() == numel_, "the offload store holds {} values, this rank's fp32 master {}",
            store.value_count(), numel_);
  for (const Run& r : runs_) store.write(2, r.at, r.hi - r.lo, ps_.values().data() + r.lo);
  store_ = &store;
  ps_.keep_flat_values(complement(operand_, ps_.total_numel()));
  invalidate();
}

std::size_t ShardedMaster::run_at(int64_t f) const {
  // The first run ending after f.
  const auto it = std::upper_bound(runs_.begin(), runs_.end(), f, [](int64_t x, const Run& r) { return x < r.hi; });
  return static_cast<std::size_t>(it - runs_.begin());
}

std::pair<float*, int64_t> ShardedMaster::values_at(int64_t flat, int64_t n, const optim::MomentStore::Block& b) {
  const std::size_t k = run_at(flat);
  if (k < runs_.size() && runs_[k].lo <= flat) {
    const Run& r = runs_[k];
    const int64_t at = r.at + (flat - r.lo), count = std::min(n, r.hi - flat);
    if (!store_) return {master_.data() + at, count};
    // The block's values part holds the master elements of its store range, in master order.
    TRI_CHECK(b.w != nullptr && at >= b.w_first && at + count <= b.w_first + b.w_count,
              "master elements [{}, {}) are not in the offload block's values [{}, {})", at, at + count, b.w_first,
              b.w_first + b.w_count);
    return {b.w + (at - b.w_first), count};
  }
  // A value-read element: the flat buffer holds it, up to the next run.
  const int64_t end = k < runs_.size() ? std::min(flat + n, runs_[k].lo) : flat + n;
  return {ps_.values().data() + flat, end - flat};
}

void ShardedMaster::begin_update(int64_t step) {
  stale_ = true;
  rounded_.reset();
  rounding_update_.reset();
  if (!store_ || copy_.data() == nullptr) return;  // no copy yet: the first refresh makes it whole
  nn::WeightRounding r = rounding_;
  r.step = static_cast<uint64_t>(step);
  rounding_update_ = r;
}

void ShardedMaster::round_block(const optim::MomentStore::Block& b) {
  if (!rounding_update_ || b.w_count == 0) return;
  kernels::bf16_t* copy = copy_.reserve(tracker_, static_cast<std::size_t>(ps_.total_numel()));  // kept as is
  // The runs meeting master indices [w_first, w_first + w_count) (runs_ ascend in both).
  const int64_t lo = b.w_first, hi = b.w_first + b.w_count;
  auto it = std::upper_bound(runs_.begin(), runs_.end(), lo, [](int64_t x, const Run& r) { return x < r.at + (r.hi - r.lo); });
  for (; it != runs_.end() && it->at < hi; ++it) {
    const int64_t a = std::max(lo, it->at), e = std::min(hi, it->at + (it->hi - it->lo));
    const int64_t f = it->lo + (a - it->at);
    nn::round_weights(ps_, f, f + (e - a), b.w + (a - lo), copy + f, *rounding_update_);
  }
  if (b.begin + b.count == layout_.numel()) rounded_ = rounding_update_;  // the last block: every piece made
}

ShardedMaster::Part ShardedMaster::part(int id) const {
  const int k = run_of_.at(static_cast<std::size_t>(id));
  if (k < 0) return {};
  const Run& r = runs_[static_cast<std::size_t>(k)];
  return {r.lo - ps_.info(id).offset, r.hi - r.lo, r.at};
}

void ShardedMaster::read_master(int64_t at, int64_t n, float* out) const {
  if (n <= 0) return;
  if (store_) {
    store_->read(2, at, n, out);
  } else {
    std::memcpy(out, master_.data() + at, static_cast<std::size_t>(n) * sizeof(float));
  }
}

void ShardedMaster::read_values(int id, float* local) const {
  const nn::ParamInfo& p = ps_.info(id);
  TRI_CHECK(holds(id), "{} is not an operand-only parameter: its values are in the flat buffer", p.name);
  std::fill(local, local + p.numel, 0.0f);
  const Part q = part(id);
  read_master(q.at, q.count, local + q.local_begin);
}

void ShardedMaster::write_range(int id, int64_t first, int64_t count, const float* values) {
  const Part q = part(id);
  TRI_CHECK(holds(id) && first >= q.local_begin && count >= 0 && first + count <= q.local_begin + q.count,
            "{}: local elements [{}, {}) are not all in this rank's master shard [{}, {})", ps_.info(id).name, first,
            first + count, q.local_begin, q.local_begin + q.count);
  const int64_t at = q.at + (first - q.local_begin);
  if (store_) {
    store_->write(2, at, count, values);
  } else {
    std::memcpy(master_.data() + at, values, static_cast<std::size_t>(count) * sizeof(float));
  }
  invalidate();
}

void ShardedMaster::initialize(uint64_t seed) {
  if (!store_) {
    for (const Run& r : runs_) {
      ps_.initialize_range(seed, r.id, r.lo - ps_.info(r.id).offset, r.hi - r.lo, master_.data() + r.at);
    }
    invalidate();
    return;
  }
  // Offloaded: a bounded piece at a time, drawn with the same keys, straight into the store.
  constexpr int64_t kPiece = int64_t{1} << 20;
  FloatBuffer buf(tracker_, MemCategory::kWorkspace, static_cast<std::size_t>(std::min(kPiece, numel_)));
  for (const Run& r : runs_) {
    const int64_t local = r.lo - ps_.info(r.id).offset;
    for (int64_t done = 0; done < r.hi - r.lo;) {
      const int64_t n = std::min(kPiece, r.hi - r.lo - done);
      ps_.initialize_range(seed, r.id, local + done, n, buf.data());
      store_->write(2, r.at + done, n, buf.data());
      done += n;
    }
  }
  invalidate();
}

std::vector<FlatRange> ShardedMaster::value_ranges(int64_t lo, int64_t hi) const {
  std::vector<FlatRange> out;
  for (const auto& [a, b] : complement(operand_, ps_.total_numel())) {
    const int64_t x = std::max(a, lo), y = std::min(b, hi);
    if (x < y) out.emplace_back(x, y);
  }
  return out;
}

void ShardedMaster::refresh(kernels::MatmulEngine& mm, const nn::WeightRounding& r, const GroupOf& group_of,
                            const WaitAll& wait_all) {
  const int64_t total = ps_.total_numel();
  kernels::bf16_t* copy = copy_.reserve(tracker_, static_cast<std::size_t>(total));
  if (total == 0) return;
  rounding_ = r;
  // This rank's pieces, run by run: the master's values, and the flat buffer's between them.
  // Offloaded, the update rounded the master's pieces as they streamed by (with r: the same
  // bits); otherwise (an init, a load, the first copy) they are read back from the store, a
  // bounded piece at a time.
  const bool made = store_ && rounded_ && rounded_->stochastic == r.stochastic && rounded_->seed == r.seed &&
                    rounded_->step == r.step && rounded_->precision == r.precision;
  FloatBuffer piece;
  constexpr int64_t kPiece = int64_t{1} << 20;
  if (store_ && !made && numel_ > 0) {
    piece = FloatBuffer(tracker_, MemCategory::kWorkspace, static_cast<std::size_t>(std::min(kPiece, numel_)));
  }
  for (const ShardSegment& s : layout_.segments) {
    for (int64_t f = s.my_lo(); f < s.my_hi();) {
      const std::size_t k = run_at(f);
      const bool master = k < runs_.size() && runs_[k].lo <= f;
      if (!master || !store_) {
        const auto [src, n] = values_at(f, s.my_hi() - f, optim::MomentStore::Block{});
        nn::round_weights(ps_, f, f + n, src, copy + f, r);
        f += n;
        continue;
      }
      const Run& run = runs_[k];
      const int64_t n = std::min(run.hi, s.my_hi()) - f;
      if (!made) {
        for (int64_t done = 0; done < n;) {
          const int64_t len = std::min(kPiece, n - done);
          read_master(run.at + (f + done - run.lo), len, piece.data());
          nn::round_weights(ps_, f + done, f + done + len, piece.data(), copy + f + done, r);
          done += len;
        }
      }
      f += n;
    }
  }
  rounded_.reset();
  std::vector<comm::Work> works;
  for (const ShardSegment& s : layout_.segments) {
    comm::Communicator& group = group_of(s);
    if (group.size() == 1 || s.hi == s.lo) continue;
    const std::vector<int64_t> counts = s.counts_of(s.lo, s.hi);
    works.push_back(group.all_gather_raw(copy + s.my_lo(), s.my_hi() - s.my_lo(), copy + s.lo, s.hi - s.lo,
                                         std::span<const int64_t>(counts), comm::DType::kBF16));
  }
  wait_all(works);
  copy_.register_with(mm, ps_.values().data());
  stale_ = false;
}

void ShardedMaster::gather_flat_values(const GroupOf& group_of, const WaitAll& wait_all) {
  // Per segment: every rank's value-read elements of its piece, back to back in flat order (so
  // the gathered buffer is the segment's value-read elements in flat order).
  struct Pending {
    std::vector<FlatRange> ranges;
    FloatBuffer send, recv;
  };
  std::vector<Pending> pending;
  std::vector<comm::Work> works;
  pending.reserve(layout_.segments.size());
  for (const ShardSegment& s : layout_.segments) {
    comm::Communicator& group = group_of(s);
    if (group.size() == 1) continue;
    Pending p;
    p.ranges = value_ranges(s.lo, s.hi);
    std::vector<int64_t> counts(static_cast<std::size_t>(s.size()), 0);
    int64_t all = 0;
    for (const auto& [a, b] : p.ranges) {
      const std::vector<int64_t> c = s.counts_of(a, b);
      for (std::size_t k = 0; k < c.size(); ++k) counts[k] += c[k];
      all += b - a;
    }
    if (all == 0) continue;
    const int64_t mine = counts[static_cast<std::size_t>(s.rank)];
    p.send = FloatBuffer(tracker_, MemCategory::kCommBuffers, static_cast<std::size_t>(mine));
    p.recv = FloatBuffer(tracker_, MemCategory::kCommBuffers, static_cast<std::size_t>(all));
    int64_t at = 0;
    for (const auto& [a, b] : value_ranges(s.my_lo(), s.my_hi())) {
      std::memcpy(p.send.data() + at, ps_.values().data() + a, static_cast<std::size_t>(b - a) * sizeof(float));
      at += b - a;
    }
    works.push_back(group.all_gather_v(std::span<const float>(p.send.data(), static_cast<std::size_t>(mine)),
                                       std::span<float>(p.recv.data(), static_cast<std::size_t>(all)),
                                       std::span<const int64_t>(counts)));
    pending.push_back(std::move(p));
  }
  wait_all(works);
  for (const Pending& p : pending) {
    int64_t at = 0;
    for (const auto& [a, b] : p.ranges) {
      std::memcpy(ps_.values().data() + a, p.recv.data() + at, static_cast<std::size_t>(b - a) * sizeof(float));
      at += b - a;
    }
  }
}

}  // namespace trident::parallel
