// Pipeline partitioning, schedules and simulator: every schedule over many (pp, M, V) runs
// without deadlock, runs each (micro-batch, chunk) forward then backward exactly once per
// rank, holds the expected live activations and has the textbook bubble.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>

#include "core/check.h"
#include "parallel/pipeline/partition.h"
#include "parallel/pipeline/schedule.h"
#include "parallel/pipeline/simulator.h"

namespace trident::pp {
namespace {

std::vector<ScheduleSpec> all_specs() {
  std::vector<ScheduleSpec> specs;
  for (int p : {1, 2, 3, 4, 8}) {
    for (int M : {1, 2, 3, 4, 5, 7, 8, 12, 16}) {
      specs.push_back({ScheduleKind::kGPipe, p, M, 1});
      specs.push_back({ScheduleKind::kOneFOneB, p, M, 1});
      if (p >= 2 && M % p == 0) {
        for (int V : {2, 3, 4}) specs.push_back({ScheduleKind::kInterleaved, p, M, V});
      }
    }
  }
  return specs;
}

std::string expect_msg(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(PipelineSchedule, EveryScheduleRunsEachMicroBatchOnceInOrderWithoutDeadlock) {
  for (const ScheduleSpec& spec : all_specs()) {
    SCOPED_TRACE(spec.describe());
    const auto lists = build_all_schedules(spec);
    for (int r = 0; r < spec.pp; ++r) {
      std::map<std::pair<int, int>, int> fwd_at, bwd_at;
      const auto& list = lists[static_cast<std::size_t>(r)];
      for (std::size_t i = 0; i < list.size(); ++i) {
        const Instruction& ins = list[i];
        if (ins.op == Op::kForward) {
          EXPECT_TRUE(fwd_at.emplace(std::pair{ins.mb, ins.chunk}, i).second);
        }
        if (ins.op == Op::kBackward) {
          EXPECT_TRUE(bwd_at.emplace(std::pair{ins.mb, ins.chunk}, i).second);
        }
      }
      EXPECT_EQ(fwd_at.size(), static_cast<std::size_t>(spec.micro_batches * spec.virtual_stages));
      EXPECT_EQ(bwd_at.size(), fwd_at.size());
      for (auto& [key, i] : bwd_at) EXPECT_LT(fwd_at.at(key), i);
      EXPECT_EQ(list.back().op, Op::kEnd);
    }
    const SimResult sim = simulate(spec, lists);
    ASSERT_TRUE(sim.ok) << sim.error;
  }
}

TEST(PipelineSchedule, OneFOneBHoldsAtMostPpActivationsGPipeHoldsM) {
  for (int p : {1, 2, 3, 4, 8}) {
    for (int M : {1, 2, 3, 4, 7, 8, 16}) {
      SCOPED_TRACE(fmt::format("pp={} M={}", p, M));
      const SimResult f = simulate({ScheduleKind::kOneFOneB, p, M, 1});
      const SimResult g = simulate({ScheduleKind::kGPipe, p, M, 1});
      ASSERT_TRUE(f.ok && g.ok);
      EXPECT_EQ(f.peak_live[0], std::min(p, M));
      for (int r = 0; r < p; ++r) {
        EXPECT_EQ(f.peak_live[static_cast<std::size_t>(r)], std::min(p - r, M));
        EXPECT_EQ(g.peak_live[static_cast<std::size_t>(r)], M);
      }
    }
  }
}

TEST(PipelineSchedule, BubbleMatchesTheoryForEqualStageCosts) {
  // Equal chunks, forward cost F, backward cost B, no message latency: both GPipe and 1F1B
  // take (M + p - 1)(F + B), so every rank idles (p - 1) / (M + p - 1) of the step.
  for (double bwd_ratio : {1.0, 2.0, 3.0}) {
    for (int p : {1, 2, 3, 4, 8}) {
      for (int M : {1, 2, 3, 4, 7, 8, 16}) {
        SCOPED_TRACE(fmt::format("pp={} M={} B/F={}", p, M, bwd_ratio));
        CostModel c;
        c.forward = 1.0, c.backward = bwd_ratio;
        const double theory = static_cast<double>(p - 1) / (M + p - 1);
        for (ScheduleKind k : {ScheduleKind::kGPipe, ScheduleKind::kOneFOneB}) {
          const SimResult s = simulate({k, p, M, 1}, c);
          ASSERT_TRUE(s.ok) << s.error;
          EXPECT_NEAR(s.step_time, (M + p - 1) * (1.0 + bwd_ratio), 1e-9);
          for (double b : s.bubble) EXPECT_NEAR(b, theory, 1e-9);
        }
      }
    }
  }
}

TEST(PipelineSchedule, InterleavedBubbleShrinksByV) {
  // Each of the V chunks costs 1/V of a stage. Narayanan et al.: bubble time (p-1)(F+B)/V,
  // i.e. a fraction (p-1) / (V M + p - 1) of the step.
  for (int p : {2, 4, 8}) {
    for (int M : {p, 2 * p, 4 * p}) {
      const SimResult base = simulate({ScheduleKind::kOneFOneB, p, M, 1});
      for (int V : {2, 4}) {
        SCOPED_TRACE(fmt::format("pp={} M={} V={}", p, M, V));
        CostModel c;
        c.forward = 1.0 / V, c.backward = 2.0 / V;
        const SimResult s = simulate({ScheduleKind::kInterleaved, p, M, V}, c);
        ASSERT_TRUE(s.ok) << s.error;
        const double theory = static_cast<double>(p - 1) / (V * M + p - 1);
        EXPECT_NEAR(s.bubble[0], theory, 1e-9) << s.timeline.ascii();
        EXPECT_LT(s.step_time, base.step_time);
        const double base_bubble_time = base.step_time - 3.0 * M;
        EXPECT_NEAR(s.step_time - 3.0 * M, base_bubble_time / V, 1e-9);
      }
    }
  }
}

TEST(PipelineSchedule, FormatsCompactly) {
  const ScheduleSpec spec{ScheduleKind::kOneFOneB, 4, 8, 1};
  EXPECT_EQ(format_schedule(compute_order(spec, 0), 1),
            "F0 F1 F2 F3 B0 F4 B1 F5 B2 F6 B3 F7 B4 B5 B6 B7");
  EXPECT_EQ(format_schedule(compute_order(spec, 3), 1),
            "F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5 F6 B6 F7 B7");
  EXPECT_EQ(format_schedule(build_schedule({ScheduleKind::kGPipe, 2, 2, 1}, 1), 1),
            "RA0 F0 RA1 F1 B0 SG0 B1 SG1 TIED END");
  EXPECT_EQ(format_schedule(compute_order({ScheduleKind::kInterleaved, 2, 2, 2}, 0), 2),
            "F0.0 F1.0 F0.1 F1.1 B0.1 B1.1 B0.0 B1.0");
}

TEST(PipelineSchedule, SimulatorTimelinePrints) {
  CostModel c;
  const SimResult s = simulate({ScheduleKind::kOneFOneB, 2, 2, 1}, c);
  ASSERT_TRUE(s.ok);
  // One column per cost unit (step time 9): rank 0 waits for B0 of rank 1, then for B1.
  const std::string a = s.timeline.ascii(9);
  EXPECT_NE(a.find("rank  0 |01..aa.bb|"), std::string::npos) << a;
  EXPECT_NE(a.find("rank  1 |.0aa1bb..|"), std::string::npos) << a;
  EXPECT_NE(s.timeline.svg().find("<svg"), std::string::npos);
  EXPECT_NE(s.summary().find("peak live"), std::string::npos);
}

TEST(PipelineSchedule, SimulatorNamesDeadlockAndInvalidOrders) {
  const ScheduleSpec spec{ScheduleKind::kOneFOneB, 2, 2, 1};
  auto lists = build_all_schedules(spec);
  // The last rank runs a backward before its forward.
  lists[1] = add_communication(spec, 1, {{Op::kBackward, 0, 0, -1}, {Op::kForward, 0, 0, -1},
                                         {Op::kForward, 1, 0, -1}, {Op::kBackward, 1, 0, -1}});
  SimResult s = simulate(spec, lists);
  EXPECT_FALSE(s.ok);
  // First the invalid order is caught: a backward before its forward.
  EXPECT_NE(s.error.find("backward before its forward"), std::string::npos) << s.error;
  // A genuine cycle: rank 1 wants activation 1 first, which rank 0 sends only after it got
  // the gradient of micro-batch 0.
  lists = build_all_schedules(spec);
  lists[1] = add_communication(spec, 1, {{Op::kForward, 1, 0, -1}, {Op::kBackward, 1, 0, -1},
                                         {Op::kForward, 0, 0, -1}, {Op::kBackward, 0, 0, -1}});
  lists[0] = add_communication(spec, 0, {{Op::kForward, 0, 0, -1}, {Op::kBackward, 0, 0, -1},
                                         {Op::kForward, 1, 0, -1}, {Op::kBackward, 1, 0, -1}});
  s = simulate(spec, lists);
  EXPECT_FALSE(s.ok);
  EXPECT_NE(s.error.find("deadlock"), std::string::npos) << s.error;
  EXPECT_NE(s.error.find("rank 0 at #2 RG0"), std::string::npos) << s.error;
  EXPECT_NE(s.error.find("rank 1 at #0 RA1"), std::string::npos) << s.error;
  EXPECT_NE(s.error.find("[RA1]"), std::string::npos) << s.error;
}

TEST(PipelineSchedule, ClearErrorsForBadInput) {
  EXPECT_NE(expect_msg([] { ScheduleSpec{ScheduleKind::kInterleaved, 4, 6, 2}.validate(); })
                .find("divisible by --pp (4)"),
            std::string::npos);
  EXPECT_NE(expect_msg([] { ScheduleSpec{ScheduleKind::kOneFOneB, 4, 6, 2}.validate(); })
                .find("needs --schedule interleaved"),
            std::string::npos);
  EXPECT_NE(expect_msg([] { ScheduleSpec{ScheduleKind::kInterleaved, 4, 8, 1}.validate(); })
                .find("--virtual-stages >= 2"),
            std::string::npos);
  EXPECT_NE(expect_msg([] { ScheduleSpec{ScheduleKind::kGPipe, 2, 0, 1}.validate(); })
                .find("--micro-batches must be >= 1"),
            std::string::npos);
  EXPECT_NE(expect_msg([] { parse_schedule_kind("zigzag"); }).find("gpipe, 1f1b or interleaved"),
            std::string::npos);
  EXPECT_NE(expect_msg([] { partition_layers(4, {8, 1}); }).find("more pipeline stages than layers"),
            std::string::npos);
  EXPECT_NE(expect_msg([] { partition_layers(6, {2, 2}); }).find("divisible by pp(2) * virtual_stages(2)"),
            std::string::npos);
  EXPECT_NE(expect_msg([] { partition_layers(8, {2, 2, true}); }).find("cost-balanced"),
            std::string::npos);
}

TEST(PipelinePartition, EvenInterleavedAndCostBalanced) {
  Partition p = partition_layers(10, {4, 1});
  ASSERT_EQ(p.num_chunks(), 4);
  std::vector<int> sizes;
  for (const auto& c : p.chunks) sizes.push_back(c.layer_end - c.layer_begin);
  EXPECT_EQ(sizes, (std::vector<int>{3, 3, 2, 2}));
  EXPECT_TRUE(p.chunks.front().has_embedding && !p.chunks.front().has_head);
  EXPECT_TRUE(p.chunks.back().has_head && !p.chunks.back().has_embedding);
  EXPECT_EQ(p.chunks.back().layer_end, 10);

  // Interleaved: rank 1 of pp 2 holds global chunks 1 and 3.
  p = partition_layers(8, {2, 2});
  EXPECT_EQ(p.chunk(1, 0).layer_begin, 2);
  EXPECT_EQ(p.chunk(1, 1).layer_begin, 6);
  EXPECT_TRUE(p.chunk(1, 1).has_head);
  EXPECT_TRUE(p.chunk(0, 0).has_embedding);
  EXPECT_NE(p.describe().find("pp rank 1: chunk 1 = layers [2, 4); chunk 3 = layers [6, 8) + ln_f + head"),
            std::string::npos) << p.describe();

  // Cost-balanced: 6 layers + embedding (1) + head (1) = 8 units over 4 stages -> 1, 2, 2, 1.
  PartitionOptions o{4, 1, true};
  p = partition_layers(6, o);
  sizes.clear();
  for (const auto& c : p.chunks) sizes.push_back(c.layer_end - c.layer_begin);
  EXPECT_EQ(sizes, (std::vector<int>{1, 2, 2, 1}));
  // Per-layer costs: two cheap (dense) layers of 0.25 before four of 1, embedding 0, head 1:
  // total 5.5 over 2 stages -> the first ends nearest 2.75, after layer 3 (cost 2.5; after
  // layer 4 it would be 3.5), where counting layers alike would split 3 + 3.
  o = PartitionOptions{2, 1, true, 0.0, 1.0, {0.25, 0.25, 1, 1, 1, 1}};
  p = partition_layers(6, o);
  EXPECT_EQ(p.chunks[0].layer_end, 4);
  o.layer_costs.clear();
  EXPECT_EQ(partition_layers(6, o).chunks[0].layer_end, 3);
  o.layer_costs = {1, 1};
  EXPECT_NE(expect_msg([&] { partition_layers(6, o); }).find("2 given for 6 layers"), std::string::npos);
  o.layer_costs = {1, 1, 1, 1, 1, -1};
  EXPECT_NE(expect_msg([&] { partition_layers(6, o); }).find("finite and >= 0"), std::string::npos);
  // Single stage: everything.
  p = partition_layers(3, {1, 1});
  EXPECT_TRUE(p.chunks[0].has_embedding && p.chunks[0].has_head);
}

}  // namespace
}  // namespace trident::pp
