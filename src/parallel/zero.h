// ZeRO shard layout: the flat parameter buffer [0, total) split over the dp group into
// contiguous shards with comm::chunk_counts (the first total % N ranks hold one element more;
// no padding). Every range of the flat buffer (a bucket, a layer group) then maps to per-rank
// counts that reduce_scatter_v / all_gather_v take directly, in rank order. The reducer that
// uses it (stages 1-3) is parallel/ddp_reducer.h.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "comm/communicator.h"

namespace trident::parallel {

struct ShardLayout {
  int rank = 0, size = 1;
  int64_t total = 0;
  std::vector<int64_t> begins;  // size + 1 entries: rank r holds [begins[r], begins[r + 1])

  ShardLayout() = default;
  ShardLayout(int64_t total_elems, int dp_rank, int dp_size)
      : rank(dp_rank), size(dp_size), total(total_elems) {
    const std::vector<int64_t> counts = comm::chunk_counts(total, size);
    begins.assign(1, 0);
    for (int64_t c : counts) begins.push_back(begins.back() + c);
  }
  int64_t begin() const { return begins[static_cast<std::size_t>(rank)]; }
  int64_t end() const { return begins[static_cast<std::size_t>(rank) + 1]; }
  int64_t numel() const { return end() - begin(); }
  // Elements of [lo, hi) that each rank holds (contiguous, in rank order).
  std::vector<int64_t> counts_of(int64_t lo, int64_t hi) const {
    std::vector<int64_t> c(static_cast<std::size_t>(size));
    for (int r = 0; r < size; ++r) {
      const int64_t b = std::max(lo, begins[static_cast<std::size_t>(r)]);
      const int64_t e = std::min(hi, begins[static_cast<std::size_t>(r) + 1]);
      c[static_cast<std::size_t>(r)] = std::max<int64_t>(0, e - b);
    }
    return c;
  }
  // This rank's part of [lo, hi): [b, e) in flat indices (b == e when empty).
  std::pair<int64_t, int64_t> mine(int64_t lo, int64_t hi) const {
    const int64_t b = std::max(lo, begin()), e = std::min(hi, end());
    return {b, std::max(b, e)};
  }
};

}  // namespace trident::parallel
