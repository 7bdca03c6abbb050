// The planner and expert parallelism (docs/planner.md): which ep splits it enumerates, the MoE
// token exchange and the edp gradient reduction in the step time, priced by the same link
// model as the other collectives, and which groups span nodes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "plan/placement.h"
#include "plan/planner.h"

namespace trident::plan {
namespace {

// mixtral-tiny: 4 MoE layers of E = 4 experts (top k = 2), C = 32, expert width I = 48.
constexpr double kC = 32, kL = 4, kE = 4, kK = 2, kI = 48;

PlanRequest mixtral(int world, int64_t batch) {
  PlanRequest r;
  r.model = nn::model_preset("mixtral-tiny");
  r.world = world;
  r.batch_size = batch;
  r.seq_len = 16;
  return r;
}

TEST(PlanExpertParallel, EnumeratesEpSplitsOfDpThatDivideTheExpertsAtEveryZeroStage) {
  const std::vector<Candidate> all = enumerate_layouts(mixtral(8, 8));
  std::set<std::tuple<int, int, int>> dp_ep_zero;  // valid (dp, ep > 1, zero)
  std::set<std::string> rejected;
  for (const Candidate& c : all) {
    if (c.layout.ep == 1) continue;
    if (!c.valid) {
      rejected.insert(c.layout.shape() + ": " + c.reason);
      continue;
    }
    EXPECT_EQ(c.layout.dp % c.layout.ep, 0) << c.layout.train_flags();
    dp_ep_zero.insert({c.layout.dp, c.layout.ep, c.layout.zero});
  }
  std::set<std::tuple<int, int, int>> want;
  for (auto [dp, ep] : std::vector<std::pair<int, int>>{{2, 2}, {4, 2}, {4, 4}, {8, 2}, {8, 4}}) {
    for (int zero = 0; zero <= 3; ++zero) want.insert({dp, ep, zero});
  }
  EXPECT_EQ(dp_ep_zero, want);
  // ep 8 divides dp 8 but not the 4 experts: listed as not valid, with why.
  EXPECT_EQ(rejected, std::set<std::string>{"dp8 tp1 pp1 ep8: ep 8 does not divide the 4 experts of each layer"});
  // A dense model gets none.
  PlanRequest dense = mixtral(8, 8);
  dense.model = nn::model_preset("llama-tiny");
  for (const Candidate& c : enumerate_layouts(dense)) EXPECT_EQ(c.layout.ep, 1) << c.layout.train_flags();
}

// One core per rank, no overlap: step = M x (forward + backward) + the dp traffic + AdamW, so
// what ep adds is visible term by term.
MachineModel dedicated(double bandwidth, double latency) {
  MachineModel m;
  m.cores = 64;
  m.overlap = false;
  m.comm.bandwidth = bandwidth;
  m.comm.latency = latency;
  m.world_allreduce_s = 0;
  return m;
}

TEST(PlanExpertParallel, StepAddsTheTokenExchangeAndReducesExpertsOverEdp) {
  const PlanRequest r = mixtral(4, 8);
  const double bw = 1e9, lat = 50e-6;
  const MachineModel machine = dedicated(bw, lat);
  FlopComputeModel compute(r.model, 1e9);
  Layout l1;
  l1.dp = 4, l1.micro_batches = 2;  // B = 8 / 4 / 2 = 1 sequence of 16 tokens per micro-batch
  const double N = 16, M = 2;
  auto a2a = [&](double bytes, int n) { return (n - 1.0) / n * bytes / bw + (n - 1) * lat; };
  auto allreduce = [&](double bytes, int n) { return n <= 1 ? 0.0 : 2.0 * (n - 1) / n * bytes / bw + 2.0 * (n - 1) * lat; };
  const StepPrediction p1 = predict_step(r, l1, compute, machine);
  EXPECT_EQ(p1.ep_comm_s, 0.0);
  const double compute1 = p1.dedicated_s - p1.dp_comm_s - p1.optimizer_s;
  const double expert = 3 * kI * kC;  // w1, w2, w3 of one expert
  for (int ep : {2, 4}) {
    Layout l = l1;
    l.ep = ep;
    const StepPrediction p = predict_step(r, l, compute, machine);
    // Per layer and micro-batch: forward the E counts (int64) and two exchanges of the k N
    // routed rows of C floats, backward two more.
    const double rows = 4 * kK * N * kC;
    const double exchange = M * kL * (a2a(8 * kE, ep) + 4 * a2a(rows, ep));
    EXPECT_NEAR(p.ep_comm_s, exchange, 1e-12 * exchange) << ep;
    // Dense parameters over dp 4, this rank's E / ep experts over edp = 4 / ep.
    const MemoryPrediction mem = predict_memory(r, l);
    const double local_experts = kL * kE / ep * expert;
    ASSERT_EQ(static_cast<double>(mem.expert_params_by_pp_rank[0]), local_experts) << ep;
    const double psi = static_cast<double>(mem.params_by_pp_rank[0]);
    const double dp_comm = allreduce(4 * (psi - local_experts), 4) + allreduce(4 * local_experts, 4 / ep);
    EXPECT_NEAR(p.dp_comm_s, dp_comm, 1e-12 * dp_comm) << ep;
    // Balanced routing: the expert compute per rank is ep 1's; the exchange adds to the path.
    EXPECT_NEAR(p.dedicated_s, compute1 + exchange + dp_comm + p.optimizer_s, 1e-9 * p.dedicated_s) << ep;
  }
  // Free links: ep only saves (fewer expert weights to update and reduce), so it ranks first.
  const MachineModel free = dedicated(1e18, 0);
  Layout l2 = l1;
  l2.ep = 2;
  EXPECT_LT(predict_step(r, l2, compute, free).step_s, predict_step(r, l1, compute, free).step_s);
  // A slow link makes the exchange dominate: ep ranks last.
  const MachineModel slow = dedicated(1e9, 1e-2);  // latency-bound: 5 exchanges per layer and micro-batch
  EXPECT_GT(predict_step(r, l2, compute, slow).step_s, predict_step(r, l1, compute, slow).step_s);
}

// ZeRO with ep (parallel/zero.h): dense state sharded over dp, this rank's E / ep experts over
// edp = dp / ep, so a rank holds 1 / dp of all state whatever the ep (each ceiling of a
// segment's split adds under one element: 2 segments per layer and one more).
TEST(PlanExpertParallel, ZeroShardsDenseStateOverDpAndExpertStateOverEdp) {
  const PlanRequest r = mixtral(4, 8);
  Layout l;
  l.dp = 4, l.micro_batches = 2;
  const MemoryPrediction m1 = predict_memory(r, l);
  const double psi = static_cast<double>(m1.params_by_pp_rank[0]);  // every expert (ep 1)
  const double experts = static_cast<double>(m1.expert_params_by_pp_rank[0]);
  ASSERT_EQ(experts, kL * kE * 3 * kI * kC);
  const double slack = 2 * kL + 1;
  for (int ep : {1, 2, 4}) {
    for (int zero = 1; zero <= 3; ++zero) {
      l.ep = ep, l.zero = zero;
      const MemoryBreakdown b = predict_memory(r, l).by_pp_rank[0];
      const double local = experts / ep, edp = 4.0 / ep;
      const double shard = (psi - experts) / 4 + local / edp;
      EXPECT_NEAR(shard, psi / 4, 1e-9) << ep;  // the same 1 / dp of all state
      EXPECT_NEAR(b.optimizer, 8 * shard, 8 * slack) << ep << " zero " << zero;
    }
  }
}

TEST(PlanExpertParallel, FullRecomputeRerunsTheForwardExchange) {
  PlanRequest r = mixtral(4, 8);
  const MachineModel machine = dedicated(1e9, 50e-6);
  FlopComputeModel compute(r.model, 1e9);
  Layout l;
  l.dp = 4, l.ep = 2, l.micro_batches = 2;  // 16 tokens per micro-batch
  Layout l1 = l;
  l1.ep = 1;
  const StepPrediction plain = predict_step(r, l, compute, machine), plain1 = predict_step(r, l1, compute, machine);
  r.recompute = nn::Recompute::kFull;
  const StepPrediction rerun = predict_step(r, l, compute, machine), rerun1 = predict_step(r, l1, compute, machine);
  // forward (counts + 2 exchanges) twice, backward's 2 once: M = 2 micro-batches of 4 layers.
  const double rows = 4 * kK * 16 * kC, bw = 1e9, lat = 50e-6;
  const double x = 0.5 * rows / bw + lat, counts = 0.5 * 8 * kE / bw + lat;
  const double again = 2 * kL * (counts + 2 * x);
  EXPECT_NEAR(rerun.ep_comm_s - plain.ep_comm_s, again, 1e-12);
  // ... and on the step: what full recompute adds at ep 2 beyond what it adds at ep 1 (the
  // layers' compute rerun, alike) is that exchange.
  EXPECT_NEAR((rerun.dedicated_s - plain.dedicated_s) - (rerun1.dedicated_s - plain1.dedicated_s), again, 1e-9);
}

TEST(PlanExpertParallel, EpGroupsAreConsecutiveDpRanksAndEdpGroupsStrideByEp) {
  // 4 ranks, 2 per node, dp 4: ep 2 groups {0,1}, {2,3} stay inside a node; edp groups
  // {0,2}, {1,3} cross, one stream each per node... two groups, each touching both nodes.
  Layout l;
  l.dp = 4, l.ep = 2;
  GroupsCrossNodes g = groups_cross_nodes(l, block_placement(4, 2));
  EXPECT_FALSE(g.ep);
  EXPECT_TRUE(g.edp);
  EXPECT_EQ(g.edp_streams, 2);
  EXPECT_TRUE(g.dp);
  // ep 4: the one ep group spans both nodes, no edp group to reduce over (size 1).
  l.ep = 4;
  g = groups_cross_nodes(l, block_placement(4, 2));
  EXPECT_TRUE(g.ep);
  EXPECT_EQ(g.ep_streams, 1);
  EXPECT_FALSE(g.edp);
  // With tp 2 fastest, 4 ranks per node: dp 0,1 on node 0 (ranks 0-3), an ep 2 group stays.
  l = Layout{};
  l.dp = 4, l.tp = 2, l.ep = 2;
  g = groups_cross_nodes(l, block_placement(8, 4));
  EXPECT_FALSE(g.ep);
  EXPECT_TRUE(g.edp);
}

TEST(PlanExpertParallel, PlanRanksEpRowsBesideTheOthers) {
  const PlanRequest r = mixtral(4, 8);
  FlopComputeModel compute(r.model, 1e9);
  auto rank_of = [](const Plan& p, int dp, int tp, int ep) {
    for (std::size_t i = 0; i < p.rows.size(); ++i) {
      const Layout& l = p.rows[i].layout;
      if (l.dp == dp && l.tp == tp && l.pp == 1 && l.ep == ep && l.zero == 0 && l.micro_batches == 1) return i;
    }
    return p.rows.size();
  };
  // Free links: ep only saves work (fewer expert weights for AdamW), so it ranks above its
  // ep 1 twin; latency-bound links the other way round.
  const Plan p = make_plan(r, compute, dedicated(1e18, 0));
  EXPECT_LT(rank_of(p, 4, 1, 2), rank_of(p, 4, 1, 1));
  EXPECT_LT(rank_of(p, 4, 1, 4), rank_of(p, 4, 1, 2));
  ASSERT_LT(rank_of(p, 2, 2, 2), p.rows.size());
  EXPECT_NE(p.rows[rank_of(p, 2, 2, 2)].layout.train_flags().find(" --ep 2"), std::string::npos);
  const Plan slow = make_plan(r, compute, dedicated(1e9, 1e-2));
  EXPECT_GT(rank_of(slow, 4, 1, 2), rank_of(slow, 4, 1, 1));
  const std::string table = format_plan(p, r);
  EXPECT_NE(table.find("dp4 tp1 pp1 ep2"), std::string::npos);
  EXPECT_NE(table.find("dp4 tp1 pp1 ep4"), std::string::npos);
  EXPECT_NE(table.find("dp2 tp2 pp1 ep2"), std::string::npos);
}

}  // namespace
}  // namespace trident::plan
