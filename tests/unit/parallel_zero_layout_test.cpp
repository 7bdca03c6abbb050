// ZeRO's shard layout under expert parallelism (parallel/zero.h): dense runs sharded over dp,
// expert runs over edp, every element of a segment held by exactly one rank of its group, and
// AdamW over a rank's pieces (optim/adamw.h) equal to AdamW over the whole buffer there.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <vector>

#include "core/check.h"
#include "nn/parameters.h"
#include "optim/adamw.h"
#include "parallel/zero.h"

namespace trident::parallel {
namespace {

TEST(ZeroLayout, OneSegmentWithoutExpertsIsTheContiguousDpSplit) {
  for (int n : {1, 3, 4}) {
    for (int r = 0; r < n; ++r) {
      const ShardLayout L(10, r, n);
      ASSERT_EQ(L.segments.size(), 1u);
      const std::vector<int64_t> counts = comm::chunk_counts(10, n);
      int64_t lo = 0;
      for (int q = 0; q < r; ++q) lo += counts[static_cast<std::size_t>(q)];
      EXPECT_EQ(L.pieces(), (std::vector<FlatRange>{{lo, lo + counts[static_cast<std::size_t>(r)]}}));
      EXPECT_EQ(L.numel(), counts[static_cast<std::size_t>(r)]);
      if (L.numel() > 0) {
        EXPECT_EQ(L.index(lo), 0);
      }
    }
  }
}

// dp 4, ep 2: dp rank d is ep rank d % 2 and edp rank d / 2 of 2. Flat buffer of 13: dense
// [0, 3), experts [3, 7), dense [7, 10), experts [10, 13).
TEST(ZeroLayout, DenseRunsOverDpExpertRunsOverEdp) {
  const std::vector<FlatRange> experts{{3, 7}, {10, 13}};
  std::vector<ShardLayout> ranks;
  for (int d = 0; d < 4; ++d) ranks.emplace_back(13, experts, d, 4, d / 2, 2);
  const ShardLayout& r0 = ranks[0];
  ASSERT_EQ(r0.segments.size(), 4u);
  EXPECT_FALSE(r0.segments[0].expert);
  EXPECT_TRUE(r0.segments[1].expert);
  EXPECT_EQ(r0.segments[1].size(), 2);
  EXPECT_EQ(r0.segments[0].size(), 4);
  // Rank 0: dense [0, 1) of chunk_counts(3, 4) = 1 1 1 0, experts [3, 5), dense [7, 8), experts [10, 12).
  EXPECT_EQ(r0.pieces(), (std::vector<FlatRange>{{0, 1}, {3, 5}, {7, 8}, {10, 12}}));
  EXPECT_EQ(r0.numel(), 6);
  EXPECT_EQ(r0.index(3), 1);
  EXPECT_EQ(r0.index(4), 2);
  EXPECT_EQ(r0.index(7), 3);
  EXPECT_EQ(r0.index(11), 5);
  // Ranks 0 and 1 hold different experts at the same offsets and each shards its own over its
  // edp group {0, 2} / {1, 3}: the same expert pieces for the same edp rank.
  EXPECT_EQ(ranks[1].pieces()[1], (FlatRange{3, 5}));
  EXPECT_EQ(ranks[2].pieces()[1], (FlatRange{5, 7}));
  // Every dense element on exactly one dp rank; every expert element on exactly one rank of
  // each edp group (once per ep coordinate).
  for (int64_t x = 0; x < 13; ++x) {
    const bool expert = (x >= 3 && x < 7) || x >= 10;
    for (int ep = 0; ep < 2; ++ep) {
      int holders = 0, holders_in_edp = 0;
      for (int d = 0; d < 4; ++d) {
        for (const auto& [lo, hi] : ranks[static_cast<std::size_t>(d)].pieces()) {
          if (x >= lo && x < hi) {
            ++holders;
            if (d % 2 == ep) ++holders_in_edp;
          }
        }
      }
      if (expert) {
        EXPECT_EQ(holders_in_edp, 1) << x << " ep " << ep;
      } else {
        EXPECT_EQ(holders, 1) << x;
      }
    }
  }
  // Shard indices cover [0, numel) in flat order.
  for (const ShardLayout& L : ranks) {
    int64_t at = 0;
    for (const auto& [lo, hi] : L.pieces()) {
      for (int64_t x = lo; x < hi; ++x) EXPECT_EQ(L.index(x), at++);
    }
    EXPECT_EQ(at, L.numel());
  }
  // A parameter lies in one segment; a range across two is a bug, said so.
  EXPECT_EQ(r0.mine(3, 7), (FlatRange{3, 5}));
  EXPECT_EQ(ranks[3].mine(0, 3), (FlatRange{3, 3}));
  EXPECT_THROW(r0.mine(2, 5), Error);
}

nn::ParameterSet make_params(MemoryTracker& tracker) {
  nn::ParameterSet ps;
  ps.begin_group("g");
  const int64_t sizes[] = {150, 37, 260, 1, 90};
  for (int i = 0; i < 5; ++i) {
    nn::ParamInfo p;
    p.name = fmt::format("p{}", i);
    p.logical_shape = p.local_shape = {sizes[i]};
    p.weight_decay = i % 2 == 0;
    ps.add(p);
  }
  ps.allocate(tracker);
  return ps;
}

float value(uint64_t seed, int64_t i) {
  uint64_t s = seed * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(i) * 0xBF58476D1CE4E5B9ULL;
  s ^= s >> 31;
  return static_cast<float>(static_cast<int64_t>(s >> 40) - (1LL << 23)) / static_cast<float>(1 << 23);
}

// AdamW over pieces, with the buffers in owned order (a shard) or in flat order (in place),
// gives the bits AdamW over the whole buffer gives on those elements.
TEST(ZeroLayout, AdamWOverPiecesIsAdamWOverTheWholeBufferThere) {
  MemoryTracker tracker;
  nn::ParameterSet ps = make_params(tracker);
  const int64_t n = ps.total_numel();
  const std::vector<FlatRange> pieces{{10, 160}, {187, 300}, {447, 460}, {500, n}};
  optim::AdamWConfig cfg;
  optim::AdamW whole(ps, tracker, cfg), flat(ps, tracker, cfg, pieces), packed(ps, tracker, cfg, pieces);
  EXPECT_EQ(flat.moments().size(), optim::AdamW::moment_count(ps, pieces));
  std::vector<float> w(static_cast<std::size_t>(n)), g(w.size());
  for (int64_t i = 0; i < n; ++i) w[static_cast<std::size_t>(i)] = value(1, i);
  std::vector<float> wf = w, wp;
  for (const auto& [lo, hi] : pieces) wp.insert(wp.end(), w.begin() + lo, w.begin() + hi);
  using At = optim::AdamW::At;
  for (int step = 0; step < 4; ++step) {
    for (int64_t i = 0; i < n; ++i) g[static_cast<std::size_t>(i)] = value(100 + static_cast<uint64_t>(step), i);
    std::vector<float> gp;
    for (const auto& [lo, hi] : pieces) gp.insert(gp.end(), g.begin() + lo, g.begin() + hi);
    whole.step(w.data(), g.data(), 1e-2f, 0.7f);
    flat.step(wf.data(), g.data(), 1e-2f, 0.7f, At::kFlat, At::kFlat);
    packed.step(wp.data(), gp.data(), 1e-2f, 0.7f);
  }
  int64_t at = 0;
  for (int64_t x = 0; x < n; ++x) {
    bool owned = false;
    for (const auto& [lo, hi] : pieces) owned = owned || (x >= lo && x < hi);
    const auto i = static_cast<std::size_t>(x);
    if (!owned) {
      EXPECT_EQ(wf[i], value(1, x)) << x;  // untouched
      continue;
    }
    EXPECT_EQ(wf[i], w[i]) << x;
    EXPECT_EQ(wp[static_cast<std::size_t>(at++)], w[i]) << x;
    // The moments by flat index agree with the whole-buffer optimizer's.
    float m = 0, mw = 0;
    flat.moments().read(0, flat.store_index(x), 1, &m);
    whole.moments().read(0, whole.store_index(x), 1, &mw);
    EXPECT_EQ(m, mw) << x;
  }
  EXPECT_EQ(flat.owned_part(150, 187), (FlatRange{150, 160}));  // p1 = [150, 187): its head
  EXPECT_EQ(flat.owned_part(160, 187), (FlatRange{160, 160}));
  EXPECT_THROW(flat.owned_part(0, n), Error);
}

}  // namespace
}  // namespace trident::parallel
