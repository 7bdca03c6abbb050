// ZeRO-1/2's sharded fp32 master and its persistent 16-bit copy (see zero_master.h).
#include "parallel/zero_master.h"

#include <algorithm>
#include <cstring>

#include "core/check.h"

namespace trident::parallel {

bool shards_master(int zero, kernels::Precision precision, bool lora, bool offload_optimizer) {
  return (zero == 1 || zero == 2) && precision != kernels::Precision::kFp32 && !lora && !offload_optimizer;
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

ShardedMaster::ShardedMaster(nn::ParameterSet& ps, const ShardLayout& layout, MemoryTracker& tracker)
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
  master_ = FloatBuffer(tracker, MemCategory::kParameters, static_cast<std::size_t>(at));
  for (const Run& r : runs_) {
    std::memcpy(master_.data() + r.at, ps.values().data() + r.lo, static_cast<std::size_t>(r.hi - r.lo) * sizeof(float));
  }
  ps.keep_flat_values(complement(operand_, ps.total_numel()));
}

std::size_t ShardedMaster::run_at(int64_t f) const {
  // The first run ending after f.
  const auto it = std::upper_bound(runs_.begin(), runs_.end(), f, [](int64_t x, const Run& r) { return x < r.hi; });
  return static_cast<std::size_t>(it - runs_.begin());
}

std::pair<float*, int64_t> ShardedMaster::values_at(int64_t flat, int64_t n) {
  const std::size_t k = run_at(flat);
  if (k < runs_.size() && runs_[k].lo <= flat) {
    const Run& r = runs_[k];
    return {master_.data() + r.at + (flat - r.lo), std::min(n, r.hi - flat)};
  }
  // A value-read element: the flat buffer holds it, up to the next run.
  const int64_t end = k < runs_.size() ? std::min(flat + n, runs_[k].lo) : flat + n;
  return {ps_.values().data() + flat, end - flat};
}

ShardedMaster::Part ShardedMaster::part(int id) const {
  const int k = run_of_.at(static_cast<std::size_t>(id));
  if (k < 0) return {};
  const Run& r = runs_[static_cast<std::size_t>(k)];
  return {r.lo - ps_.info(id).offset, r.hi - r.lo, r.at};
}

void ShardedMaster::read_values(int id, float* local) const {
  const nn::ParamInfo& p = ps_.info(id);
  TRI_CHECK(holds(id), "{} is not an operand-only parameter: its values are in the flat buffer", p.name);
  std::fill(local, local + p.numel, 0.0f);
  const Part q = part(id);
  std::memcpy(local + q.local_begin, master_.data() + q.at, static_cast<std::size_t>(q.count) * sizeof(float));
}

void ShardedMaster::write_range(int id, int64_t first, int64_t count, const float* values) {
  const Part q = part(id);
  TRI_CHECK(holds(id) && first >= q.local_begin && count >= 0 && first + count <= q.local_begin + q.count,
            "{}: local elements [{}, {}) are not all in this rank's master shard [{}, {})", ps_.info(id).name, first,
            first + count, q.local_begin, q.local_begin + q.count);
  std::memcpy(master_.data() + q.at + (first - q.local_begin), values, static_cast<std::size_t>(count) * sizeof(float));
  stale_ = true;
}

void ShardedMaster::initialize(uint64_t seed) {
  for (const Run& r : runs_) {
    ps_.initialize_range(seed, r.id, r.lo - ps_.info(r.id).offset, r.hi - r.lo, master_.data() + r.at);
  }
  stale_ = true;
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
  // This rank's pieces, run by run: the master's values, and the flat buffer's between them.
  for (const ShardSegment& s : layout_.segments) {
    for (int64_t f = s.my_lo(); f < s.my_hi();) {
      const auto [src, n] = values_at(f, s.my_hi() - f);
      nn::round_weights(ps_, f, f + n, src, copy + f, r);
      f += n;
    }
  }
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
