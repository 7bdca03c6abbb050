// ZeRO shard layout: the flat parameter buffer [0, total) cut into segments, each split over
// its own group into contiguous shards with comm::chunk_counts (the first n % N ranks hold one
// element more; no padding). Without expert parallelism there is one segment, over dp. Under
// ep, dense runs of parameters are sharded over dp and expert runs over edp (the dp / ep ranks
// holding the same experts: DeepSpeed-MoE's and Megatron's expert-data-parallel group), since
// dp ranks with another ep coordinate hold other experts at the same flat offsets. A rank's
// shard is the concatenation of its parts of the segments, in flat order ("shard index").
// Every range inside one segment (a parameter) maps to per-rank counts that reduce_scatter_v /
// all_gather_v over the segment's group take directly. The reducer that uses it (stages 1-3)
// is parallel/ddp_reducer.h.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "comm/communicator.h"
#include "core/check.h"
#include "nn/parameters.h"

namespace trident::parallel {

using FlatRange = std::pair<int64_t, int64_t>;  // [first, second) of the flat buffer

struct ShardSegment {
  int64_t lo = 0, hi = 0;       // flat range
  bool expert = false;          // sharded over edp (else over dp)
  int rank = 0;                 // this rank in the segment's group
  std::vector<int64_t> begins;  // group size + 1 entries: group rank r holds [begins[r], begins[r + 1])
  int64_t base = 0;             // shard index of this rank's first element of the segment

  int size() const { return static_cast<int>(begins.size()) - 1; }
  int64_t my_lo() const { return begins[static_cast<std::size_t>(rank)]; }
  int64_t my_hi() const { return begins[static_cast<std::size_t>(rank) + 1]; }
  // Elements of [lo, hi) (inside the segment) that each group rank holds, in rank order.
  std::vector<int64_t> counts_of(int64_t a, int64_t b) const {
    std::vector<int64_t> c(static_cast<std::size_t>(size()));
    for (int r = 0; r < size(); ++r) {
      const int64_t x = std::max(a, begins[static_cast<std::size_t>(r)]);
      const int64_t y = std::min(b, begins[static_cast<std::size_t>(r) + 1]);
      c[static_cast<std::size_t>(r)] = std::max<int64_t>(0, y - x);
    }
    return c;
  }
};

struct ShardLayout {
  int64_t total = 0;
  std::vector<ShardSegment> segments;  // in flat order, covering [0, total)

  ShardLayout() = default;
  // One segment over dp (no expert parallelism).
  ShardLayout(int64_t total_elems, int dp_rank, int dp_size)
      : ShardLayout(total_elems, {}, dp_rank, dp_size, dp_rank, dp_size) {}
  // `expert_runs`: the flat ranges of expert parameters (ascending, disjoint), sharded over the
  // edp group (this rank `edp_rank` of `edp_size`); everything else over dp.
  ShardLayout(int64_t total_elems, const std::vector<FlatRange>& expert_runs, int dp_rank, int dp_size,
              int edp_rank, int edp_size)
      : total(total_elems) {
    int64_t at = 0, base = 0;
    auto add = [&](int64_t lo, int64_t hi, bool expert) {
      if (hi <= lo && !(lo == 0 && hi == 0 && total == 0)) return;
      ShardSegment s;
      s.lo = lo, s.hi = hi, s.expert = expert;
      s.rank = expert ? edp_rank : dp_rank;
      s.begins.assign(1, lo);
      for (int64_t c : comm::chunk_counts(hi - lo, expert ? edp_size : dp_size)) s.begins.push_back(s.begins.back() + c);
      s.base = base;
      base += s.my_hi() - s.my_lo();
      segments.push_back(std::move(s));
    };
    for (const auto& [lo, hi] : expert_runs) {
      add(at, lo, false);
      add(lo, hi, true);
      at = hi;
    }
    add(at, total, false);
    numel_ = base;
  }

  // Elements this rank holds (the length of its shard buffers).
  int64_t numel() const { return numel_; }
  // This rank's flat ranges, in shard order (empty ones included).
  std::vector<FlatRange> pieces() const {
    std::vector<FlatRange> out;
    for (const ShardSegment& s : segments) out.emplace_back(s.my_lo(), s.my_hi());
    return out;
  }
  const ShardSegment& segment_of(int64_t flat) const {
    for (const ShardSegment& s : segments) {
      if (flat >= s.lo && flat < s.hi) return s;
    }
    TRI_CHECK(false, "flat element {} is outside the {} parameters", flat, total);
    return segments.front();
  }
  // This rank's part of [lo, hi), a range inside one segment (a parameter): [b, e) in flat
  // indices (b == e when empty).
  FlatRange mine(int64_t lo, int64_t hi) const {
    if (hi <= lo) return {lo, lo};
    const ShardSegment& s = segment_of(lo);
    TRI_CHECK(hi <= s.hi, "flat range [{}, {}) crosses the ZeRO segment [{}, {})", lo, hi, s.lo, s.hi);
    const int64_t b = std::max(lo, s.my_lo()), e = std::min(hi, s.my_hi());
    return {b, std::max(b, e)};
  }
  // Index in this rank's shard buffers of flat element `flat`, which this rank holds.
  int64_t index(int64_t flat) const {
    const ShardSegment& s = segment_of(flat);
    return s.base + (flat - s.my_lo());
  }

 private:
  int64_t numel_ = 0;
};

// The flat ranges of `params`' expert parameters (nn::ParamInfo::expert >= 0), merged where they
// touch, ascending: the segments ShardLayout shards over edp under expert parallelism.
inline std::vector<FlatRange> expert_runs(const nn::ParameterSet& params) {
  std::vector<FlatRange> runs;
  for (const nn::ParamInfo& p : params.infos()) {
    if (p.expert < 0 || p.numel == 0) continue;
    if (!runs.empty() && runs.back().second == p.offset) {
      runs.back().second += p.numel;
    } else {
      runs.emplace_back(p.offset, p.offset + p.numel);
    }
  }
  return runs;
}

// The layout DataParallel shards `params` with at dp rank `dp_rank` of `dp_size` under expert
// parallelism `ep` (ep 1: one segment over dp; otherwise expert runs over edp = dp / ep, where
// this rank is edp rank dp_rank / ep, as comm::Mesh groups them). The reducer and the planner's
// count of a rank's AdamW moments both use it.
inline ShardLayout shard_layout_of(const nn::ParameterSet& params, int dp_rank, int dp_size, int ep) {
  if (ep <= 1) return ShardLayout(params.total_numel(), dp_rank, dp_size);
  return ShardLayout(params.total_numel(), expert_runs(params), dp_rank, dp_size, dp_rank / ep, dp_size / ep);
}

}  // namespace trident::parallel
