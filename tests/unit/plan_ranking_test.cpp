// Planner ranking: with ample memory, free communication and a core per rank the plain
// data-parallel layout is predicted fastest and pipelines pay their bubble; shared cores make
// the step the total work over the cores; memory limits filter, and nothing fitting is a clear
// error.
#include <gtest/gtest.h>

#include <vector>

#include "core/check.h"
#include "plan/planner.h"

namespace trident::plan {
namespace {

PlanRequest request() {
  PlanRequest r;
  r.model = nn::model_preset("tiny");
  r.world = 8;
  r.batch_size = 8;
  r.seq_len = 32;
  return r;
}

MachineModel free_comm(int cores) {
  MachineModel m;
  m.cores = cores;
  m.comm.bandwidth = 1e18;
  m.comm.latency = 0;
  return m;
}

TEST(PlanRanking, FreeCommunicationDedicatedCoresPrefersDataParallel) {
  const PlanRequest r = request();
  FlopComputeModel compute(r.model, 1e9, 1e18);
  const Plan p = make_plan(r, compute, free_comm(8));
  ASSERT_FALSE(p.rows.empty());
  const PlanRow& best = p.rows.front();
  // No pipeline: dp 8 (or dp x tp, which does the same FLOPs per rank here).
  EXPECT_EQ(best.layout.pp, 1) << best.layout.train_flags();
  EXPECT_EQ(best.layout.micro_batches, 1);
  for (std::size_t i = 1; i < p.rows.size(); ++i) {
    EXPECT_GE(p.rows[i - 1].step.tokens_per_s, p.rows[i].step.tokens_per_s - 1e-9);
  }
  // dp 8 does 1/8 of the single-rank work: tokens/s = 8x one rank's.
  PlanRequest one = r;
  one.world = 1;
  const PlanRow single = predict_layout(one, Layout{}, compute, free_comm(1));
  EXPECT_NEAR(best.step.tokens_per_s / single.step.tokens_per_s, 8.0, 0.05);
  // A pipeline of 8 with M = 1 idles 7/8 of the time and is no faster than one rank.
  Layout pipe;
  pipe.pp = 8;
  pipe.schedule = pp::ScheduleKind::kGPipe;
  const PlanRow p8 = predict_layout(r, pipe, compute, free_comm(8));
  EXPECT_NEAR(p8.step.bubble, 7.0 / 8, 0.05);
  EXPECT_LT(p8.step.tokens_per_s, 1.2 * single.step.tokens_per_s);
}

// Ranks that burn CPU while waiting in a pipeline bubble (MachineModel::wait_cpu, measured
// under mpirun) make a pipeline on shared cores slower; without a pipeline nothing changes.
TEST(PlanRanking, WaitingRanksThatSpinCostPipelinesOnSharedCores) {
  const PlanRequest r = request();
  FlopComputeModel compute(r.model, 1e9, 1e18);
  MachineModel yielding = free_comm(2), spinning = free_comm(2);
  spinning.wait_cpu = 0.2;
  Layout pipe;
  pipe.pp = 4;
  pipe.dp = 2;
  pipe.micro_batches = 2;
  const PlanRow a = predict_layout(r, pipe, compute, yielding), b = predict_layout(r, pipe, compute, spinning);
  EXPECT_GT(b.step.step_s, 1.05 * a.step.step_s);
  // Never worse than the pipeline's path at each rank's fair share of the cores.
  EXPECT_LE(b.step.step_s, a.step.dedicated_s * 8 / 2 + 1e-12);
  Layout dp;
  dp.dp = 8;
  EXPECT_DOUBLE_EQ(predict_layout(r, dp, compute, yielding).step.step_s,
                   predict_layout(r, dp, compute, spinning).step.step_s);
}

TEST(PlanRanking, SharedCoresBoundTheStepByTotalWork) {
  const PlanRequest r = request();
  FlopComputeModel compute(r.model, 1e9, 1e18);
  // 8 ranks on 2 cores: the pipeline's bubbles are filled by other ranks' work, so pp 8 and
  // dp 8 both take (total work) / 2.
  Layout pipe;
  pipe.pp = 8, pipe.micro_batches = 8;
  Layout dp8;
  dp8.dp = 8;
  const PlanRow a = predict_layout(r, pipe, compute, free_comm(2));
  const PlanRow b = predict_layout(r, dp8, compute, free_comm(2));
  EXPECT_TRUE(a.step.shared_bound());
  EXPECT_TRUE(b.step.shared_bound());
  EXPECT_NEAR(a.step.step_s / b.step.step_s, 1.0, 0.1);
}

TEST(PlanRanking, CommunicationCostsRankZeroStagesAndOverlap) {
  const PlanRequest r = request();
  FlopComputeModel compute(r.model, 1e12, 1e18);
  MachineModel slow = free_comm(8);
  slow.comm.bandwidth = 1e6;  // 1 MB/s: communication dominates
  Layout l;
  l.dp = 8;
  std::vector<double> comm, step;
  for (int zero = 0; zero <= 3; ++zero) {
    l.zero = zero;
    const PlanRow row = predict_layout(r, l, compute, slow);
    comm.push_back(row.step.dp_comm_s);
    step.push_back(row.step.step_s);
  }
  // Bytes per step: allreduce 2(n-1)/n; ZeRO-1 adds the values' all_gather; ZeRO-2 (M = 1)
  // reduce-scatter + all_gather = an allreduce; ZeRO-3 gathers for forward and backward and
  // reduce-scatters: 1.5x DDP's bytes, as ZeRO-1 with M = 1 (the ZeRO paper's 1.5x).
  EXPECT_NEAR(comm[2], comm[0], 1e-9 * comm[0]);
  EXPECT_NEAR(comm[1], 1.5 * comm[0], 1e-9 * comm[0]);
  EXPECT_NEAR(comm[3], 1.5 * comm[0], 1e-9 * comm[0]);
  EXPECT_GT(step[3], step[0]);
  MachineModel no_overlap = slow;
  no_overlap.overlap = false;
  l.zero = 0;
  EXPECT_GE(predict_layout(r, l, compute, no_overlap).step.step_s, step[0]);
}

TEST(PlanRanking, MemoryLimitFiltersAndNothingFittingIsAClearError) {
  PlanRequest r = request();
  FlopComputeModel compute(r.model, 1e9);
  const Plan all = make_plan(r, compute, free_comm(8));
  double smallest = 1e30, largest = 0;
  for (const PlanRow& row : all.rows) {
    smallest = std::min(smallest, row.memory.worst().total());
    largest = std::max(largest, row.memory.worst().total());
  }
  r.memory_per_rank = (smallest + largest) / 2;
  const Plan some = make_plan(r, compute, free_comm(8));
  EXPECT_GT(some.fitting(), 0);
  EXPECT_LT(some.fitting(), static_cast<int>(some.rows.size()));
  for (const PlanRow& row : some.rows) {
    EXPECT_EQ(row.fits, row.memory.worst().total() <= r.memory_per_rank);
  }
  EXPECT_TRUE(some.rows.front().fits);
  EXPECT_FALSE(some.rows.back().fits);
  const std::string table = format_plan(some, r);
  EXPECT_NE(table.find("does not fit"), std::string::npos) << table;

  r.memory_per_rank = 1000;
  try {
    make_plan(r, compute, free_comm(8));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("no layout of 8 ranks fits"), std::string::npos) << msg;
    EXPECT_NE(msg.find("the smallest needs"), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace trident::plan
