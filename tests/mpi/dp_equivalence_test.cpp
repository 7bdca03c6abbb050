// Data parallelism and ZeRO 1-3 against the single-process Engine: losses and final weights of
// 10 steps of a tiny GPT for every stage, bucket size and micro-batch count; memory per rank
// against the ZeRO formulas; checkpoint state (gather/load) across layouts; bad input.
// ranks: 2 4
//
// Bounds (fp32). What differs from the single-process run is only the order of additions:
// a dp rank's gradient sums its own rows, and the dp reduction then adds the N partial sums
// (the single process adds all rows in one sweep), ZeRO-2/3 reduce-scatter and accumulate
// micro-batches on the shard, and the grad norm sums squares per shard. As in
// tp_engine_equivalence_test (u = 2^-24, eta = u * sqrt(V) = 1.9e-6, V = 1000 the longest
// reduction a token's gradient passes): loss after k steps k * u * sqrt(V / (B*T)) relative,
// grad norm k * eta relative, weights sum over steps of lr * eta * g_rms / eps (AdamW moves by
// at most |dg| / eps; g_rms = grad_norm / sqrt(N)) with eps = 1e-6 (with 1e-8 an element whose
// gradient cancels to noise takes a noise-decided step), mean |d| <= 1e-6. Measured: losses
// and grad norms <= 0.04 of their bounds, weights <= 1.3e-6 vs 6.1e-5. Every dp replica's
// weights are compared bitwise with dp rank 0's (replica_check.h). Changing only the bucket
// size is bitwise equal on 2 ranks (a + b either way); on 4 ranks MPI may pick another
// reduction algorithm for another message size, which associates the 4-term sum differently.
#include <gtest/gtest.h>

#include <array>
#include <bit>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <unistd.h>

#include "comm/communicator.h"
#include "comm/mesh.h"
#include "comm/mpi_backend.h"
#include "comm/runtime.h"
#include "core/check.h"
#include "core/rng.h"
#include "nn/model_config.h"
#include "parallel/engine.h"
#include "parallel/zero_master.h"
#include "plan/memory_model.h"
#include "mpi_gtest_main.h"
#include "equivalence_bounds.h"
#include "replica_check.h"
#include "synthetic_batch.h"

namespace trident::parallel {
namespace {

constexpr int kSteps = 10;
constexpr int64_t kBatch = 8, kSeq = 16;
constexpr float kLr = 1e-3f;
constexpr float kEps = 1e-6f;  // AdamW's epsilon, see the header

comm::CommOptions test_options() { return test::aborting_after(60.0); }

std::unique_ptr<comm::Mesh> g_world_mesh, g_self_mesh;

comm::Mesh& dp_mesh() {
  if (!g_world_mesh) {
    int n = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    g_world_mesh = std::make_unique<comm::Mesh>(comm::make_mpi_communicator(MPI_COMM_WORLD, "world", test_options()), comm::MeshShape{1, n, 1});
  }
  return *g_world_mesh;
}
comm::Mesh& self_mesh() {
  if (!g_self_mesh) {
    g_self_mesh = std::make_unique<comm::Mesh>(comm::make_mpi_communicator(MPI_COMM_SELF, "world", test_options()), comm::MeshShape{1, 1, 1});
  }
  return *g_self_mesh;
}

nn::ModelConfig model() { return nn::model_preset("tiny"); }

BatchFn batch_for(int step, int vocab) { return test::synthetic_batch(step, vocab, kSeq); }

using Result = test::RunCurves;

std::vector<std::pair<std::string, Shape>> logical_params(Engine& e) {
  std::vector<std::pair<std::string, Shape>> out;
  for (const nn::ParamInfo& p : e.model().params().infos()) out.emplace_back(p.name, p.logical_shape);
  return out;
}

std::map<std::string, std::vector<float>> gather_all(Engine& e, bool moments = false, int kind = 0) {
  std::map<std::string, std::vector<float>> w;
  for (const auto& [name, shape] : logical_params(e)) {
    std::vector<float> v(static_cast<std::size_t>(shape_numel(shape)));
    if (moments) {
      e.gather_optimizer_state(name, shape, kind, v.data());
    } else {
      e.gather_param(name, shape, v.data());
    }
    w[name] = std::move(v);
  }
  return w;
}

EngineOptions options(int zero, double bucket_mb = 25.0, bool overlap = true) {
  EngineOptions o;
  o.zero = zero;
  o.bucket_mb = bucket_mb;
  o.overlap = overlap;
  o.grad_clip = 1.0;
  o.adamw.eps = kEps;
  return o;
}

Result train(comm::Mesh& mesh, const EngineOptions& opt, int micro = 1, int steps = kSteps) {
  MemoryTracker tracker;
  Engine e(mesh, model(), opt, tracker, kBatch, kSeq, micro);
  e.initialize(1234);
  Result r;
  for (int s = 0; s < steps; ++s) {
    StepStats st = e.train_step(batch_for(s, e.config().vocab_size), kLr);
    r.losses.push_back(st.loss);
    r.norms.push_back(st.grad_norm);
  }
  // gather_all reads dp rank 0's copy; the other replicas must hold the very same bits.
  const test::ReplicaMismatch rm = test::compare_dp_replicas(e);
  EXPECT_EQ(rm.elements, 0) << "zero " << opt.zero << ": dp replicas differ, first " << rm.first;
  r.weights = gather_all(e);
  return r;
}

const Result& reference(int micro) {
  static std::map<int, Result> cache;
  auto it = cache.find(micro);
  if (it == cache.end()) it = cache.emplace(micro, train(self_mesh(), options(0), micro)).first;
  return it->second;
}

struct Diff {
  double max_abs = 0.0, mean_abs = 0.0;
  bool bitwise = true;
};
Diff compare_weights(const Result& a, const Result& b) {
  Diff d;
  int64_t n = 0;
  for (const auto& [name, va] : a.weights) {
    const std::vector<float>& vb = b.weights.at(name);
    for (std::size_t i = 0; i < va.size(); ++i) {
      const double x = std::fabs(static_cast<double>(va[i]) - vb[i]);
      d.max_abs = std::max(d.max_abs, x);
      d.mean_abs += x;
      d.bitwise = d.bitwise && va[i] == vb[i];
      ++n;
    }
  }
  d.mean_abs /= static_cast<double>(std::max<int64_t>(1, n));
  return d;
}

bool is_rank0() { return dp_mesh().rank() == 0; }

// The bounds of the header comment.
test::EquivalenceBounds bounds() {
  return {static_cast<double>(model().vocab_size), static_cast<double>(kBatch * kSeq), kLr, kEps};
}

void expect_matches(const Result& got, const Result& want, const std::string& what) {
  ASSERT_EQ(got.losses.size(), want.losses.size()) << what;
  const auto [loss_dev, norm_dev] = test::expect_curves_match(got, want, bounds(), what);
  if (!is_rank0()) return;
  const Diff d = compare_weights(got, want);
  const double w_bound = bounds().weights(want);
  std::printf("[dp %d] %-28s loss/norm dev <= %.2f/%.2f of bound; weights max|d| %.3g of %.3g, mean|d| %.3g%s\n",
              dp_mesh().size(), what.c_str(), loss_dev, norm_dev, d.max_abs, w_bound, d.mean_abs,
              d.bitwise ? " (bitwise equal)" : "");
  EXPECT_LE(d.max_abs, w_bound) << what;
  EXPECT_LE(d.mean_abs, 1e-6) << what;
}

class ZeroStage : public testing::TestWithParam<int> {};

TEST_P(ZeroStage, MatchesSingleProcess) {
  const int zero = GetParam();
  const Result got = train(dp_mesh(), options(zero));
  expect_matches(got, reference(1), "zero " + std::to_string(zero));
  EXPECT_LT(got.losses.back(), got.losses.front());  // it trains
}

TEST_P(ZeroStage, GradAccumulationMatches) {
  const int zero = GetParam();
  expect_matches(train(dp_mesh(), options(zero), 2), reference(2),
                 "zero " + std::to_string(zero) + " micro 2");
}

TEST_P(ZeroStage, BucketSizesGiveTheSameResult) {
  const int zero = GetParam();
  // One bucket per parameter, a few parameters per bucket (~0.01 MiB), one bucket for all;
  // with overlap off too.
  const Result one_each = train(dp_mesh(), options(zero, 1e-9));
  for (double mb : {0.01, 1000.0}) {
    const Result r = train(dp_mesh(), options(zero, mb));
    expect_matches(r, one_each, "zero " + std::to_string(zero) + " bucket " + std::to_string(mb) + " MiB");
  }
  expect_matches(train(dp_mesh(), options(zero, 0.01, false)), one_each,
                 "zero " + std::to_string(zero) + " overlap off");
  expect_matches(one_each, reference(1), "zero " + std::to_string(zero) + " 1 bucket/param");
}

INSTANTIATE_TEST_SUITE_P(Dp, ZeroStage, testing::Values(0, 1, 2, 3));

TEST(DpBuckets, ReverseOrderCoversEveryParameterOnce) {
  nn::Model m(model());
  MemoryTracker t;
  m.allocate(t);
  const nn::ParameterSet& ps = m.params();
  for (int64_t cap : {int64_t{1}, int64_t{3000}, int64_t{1} << 40}) {
    const std::vector<BucketSpan> b = assign_buckets(ps, cap);
    int64_t expect_hi = ps.total_numel();
    int expect_last = ps.size() - 1;
    for (const BucketSpan& s : b) {
      EXPECT_EQ(s.hi, expect_hi);
      EXPECT_EQ(s.last, expect_last);
      EXPECT_TRUE(s.hi - s.lo <= cap || s.first == s.last);
      expect_hi = s.lo;
      expect_last = s.first - 1;
    }
    EXPECT_EQ(expect_hi, 0);
    if (cap == 1) {
      EXPECT_EQ(static_cast<int>(b.size()), ps.size());
    }
    if (cap > ps.total_numel()) {
      EXPECT_EQ(b.size(), 1u);
    }
  }
}

// Bytes per rank at rest (after a step) against the fp32 ZeRO formulas, Ψ parameters, N ranks:
//   stage 0: 4Ψ + 4Ψ + 8Ψ = 16Ψ        stage 1: 4Ψ + 4Ψ + 8Ψ/N
//   stage 2: 4Ψ + 4Ψ/N + 8Ψ/N          stage 3: 4Ψ/N + 4Ψ/N + 8Ψ/N = 16Ψ/N
// and the peaks during the step against the formula plus the working set.
TEST(DpMemory, PerRankBytesFollowTheZeroFormulas) {
  const double N = dp_mesh().size();
  for (int zero = 0; zero <= 3; ++zero) {
    MemoryTracker t;
    const double bucket_mb = 0.02;  // ~5k floats: several buckets
    Engine e(dp_mesh(), model(), options(zero, bucket_mb), t, kBatch, kSeq, 1);
    e.initialize(1);
    t.reset_peaks();
    e.train_step(batch_for(0, e.config().vocab_size), kLr);
    const nn::ParameterSet& ps = e.model().params();
    const double psi = static_cast<double>(ps.total_numel());
    // Exact: this rank's shard is psi / N rounded up or down (comm::chunk_counts, no padding).
    const double shard = e.data_parallel() ? static_cast<double>(e.data_parallel()->layout().numel()) : psi;
    EXPECT_LE(std::fabs(shard - psi / N), 1.0) << "zero " << zero;
    const double want_p = zero >= 3 ? 4 * shard : 4 * psi;
    const double want_g = zero >= 2 ? 4 * shard : 4 * psi;
    const double want_o = zero >= 1 ? 8 * shard : 8 * psi;
    const double got_p = static_cast<double>(t.current(MemCategory::kParameters));
    const double got_g = static_cast<double>(t.current(MemCategory::kGradients));
    const double got_o = static_cast<double>(t.current(MemCategory::kOptimizerState));
    // Working sets: ZeRO-2 buckets (at most a bucket or one parameter each, the head's also
    // holding wte's bucket); ZeRO-3 gathered groups (the embeddings, the head, two blocks).
    int64_t max_param = 0, max_group = 0;
    for (const nn::ParamInfo& p : ps.infos()) max_param = std::max(max_param, p.numel);
    for (int g = 0; g < ps.num_groups(); ++g) max_group = std::max(max_group, ps.group_end(g) - ps.group_begin(g));
    const double peak_g = static_cast<double>(t.peak(MemCategory::kGradients));
    const double peak_p = static_cast<double>(t.peak(MemCategory::kParameters));
    if (is_rank0()) {
      std::printf("[dp %.0f] zero %d  Psi %.0f  params %.0f (formula %.0f)  grads %.0f (%.0f)  "
                  "optimizer %.0f (%.0f)  total %.0f (%.0f)  peak grads %.0f  peak params %.0f\n",
                  N, zero, psi, got_p, want_p, got_g, want_g, got_o, want_o, got_p + got_g + got_o,
                  want_p + want_g + want_o, peak_g, peak_p);
    }
    // The tracker counts bytes exactly and nothing else lives in these categories at rest.
    EXPECT_EQ(got_p, want_p) << "zero " << zero;
    EXPECT_EQ(got_g, want_g) << "zero " << zero;
    EXPECT_EQ(got_o, want_o) << "zero " << zero;
    if (zero >= 2) {
      const double cap = std::max<double>(bucket_mb * 1024 * 1024, 4.0 * max_param);
      EXPECT_LE(peak_g, want_g + 4 * cap) << "zero " << zero;
      EXPECT_LT(peak_g, 4 * psi) << "zero " << zero;  // never the full gradient
    }
    if (zero >= 3) {
      EXPECT_LE(peak_p, want_p + 4.0 * 4 * max_group) << "zero 3";
      EXPECT_LT(peak_p, 4 * psi) << "zero 3";  // never all values
    }
  }
}

// --precision bf16 (nn/bf16_weights.h): the fp32 values stay the optimizer's master and the
// matmuls read a bf16 copy of every element the rank holds, 2 bytes each, counted as parameters:
//   stage 0: 4Ψ + 2Ψ + 4Ψ + 8Ψ = 18Ψ (Megatron's bf16 with fp32 gradients, no distributed
//            optimizer: 18 bytes a parameter)
//   stages 1-2: the fp32 master of the operand-only parameters sharded (parallel/zero_master.h):
//            parameters 2Ψ (the copy) + 4Ψv (the value-read ones, full) + 4 x this rank's
//            operand-only shard elements; gradients 4Ψ (stage 1) or 4Ψ/N (stage 2); moments 8Ψ/N
//   stage 3: 16Ψ/N at rest, and during the step 2 bytes per gathered element besides the
//            gathered fp32 values
// and plan::predict_memory says the same for the parameters (the most any dp rank holds).
TEST(DpMemory, Bf16WeightCopyAddsTwoBytesPerHeldElement) {
  const double N = dp_mesh().size();
  for (int zero = 0; zero <= 3; ++zero) {
    MemoryTracker t;
    EngineOptions o = options(zero, 0.02);
    o.precision = kernels::Precision::kBf16;
    Engine e(dp_mesh(), model(), o, t, kBatch, kSeq, 1);
    e.initialize(1);
    t.reset_peaks();
    e.train_step(batch_for(0, e.config().vocab_size), kLr);
    const nn::ParameterSet& ps = e.model().params();
    const double psi = static_cast<double>(ps.total_numel());
    const double shard = e.data_parallel() ? static_cast<double>(e.data_parallel()->layout().numel()) : psi;
    // Stages 1-2: the copy, the value-read parameters' full values, this rank's master shard.
    int64_t operand = 0, mine = 0;
    if (zero == 1 || zero == 2) {
      for (const auto& [lo, hi] : operand_only_runs(ps)) operand += hi - lo;
      mine = operand_only_elems(ps, e.data_parallel()->layout().pieces());
      ASSERT_NE(e.data_parallel()->master(), nullptr) << "zero " << zero << ": the master is sharded by default";
    }
    const double want_p = zero >= 3   ? 4 * shard
                          : zero >= 1 ? 2 * psi + 4 * static_cast<double>(psi - operand) + 4 * static_cast<double>(mine)
                                      : 6 * psi;
    const double want_g = zero >= 2 ? 4 * shard : 4 * psi;
    const double want_o = zero >= 1 ? 8 * shard : 8 * psi;
    const double got_p = static_cast<double>(t.current(MemCategory::kParameters));
    const double got = got_p + static_cast<double>(t.current(MemCategory::kGradients)) +
                       static_cast<double>(t.current(MemCategory::kOptimizerState));
    if (is_rank0()) {
      std::printf("[dp %.0f bf16] zero %d  Psi %.0f  params %.0f (formula %.0f)  params+grads+optimizer %.0f = %.3f bytes/param\n",
                  N, zero, psi, got_p, want_p, got, got / psi);
    }
    EXPECT_EQ(got_p, want_p) << "zero " << zero;
    EXPECT_EQ(got, want_p + want_g + want_o) << "zero " << zero;
    if (zero == 0) {
      EXPECT_EQ(got, 18 * psi);
    }
    if (zero >= 3) {
      // The gathered groups' fp32 values and bf16 copies: 6 bytes per gathered element.
      int64_t max_group = 0;
      for (int g = 0; g < ps.num_groups(); ++g) max_group = std::max(max_group, ps.group_end(g) - ps.group_begin(g));
      const double peak_p = static_cast<double>(t.peak(MemCategory::kParameters));
      EXPECT_GT(peak_p, want_p + 4.0 * max_group) << "zero 3: a copy was made";
      EXPECT_LE(peak_p, want_p + 6.0 * 4 * max_group) << "zero 3";
    }
    // The planner's model (plan/memory_model.h) at rest: the same parameter bytes (stages 0-2).
    if (zero < 3) {
      plan::PlanRequest req;
      req.model = model();
      req.world = static_cast<int>(N);
      req.batch_size = kBatch;
      req.seq_len = kSeq;
      req.precision = kernels::Precision::kBf16;
      plan::Layout l;
      l.dp = static_cast<int>(N);
      l.zero = zero;
      // The planner's worst rank: the largest master shard of any dp rank.
      int64_t most = mine;
      dp_mesh().world().allreduce(std::span<int64_t>(&most, 1), comm::ReduceOp::kMax).wait();
      const double worst_p = want_p + 4 * static_cast<double>(most - mine);
      EXPECT_EQ(plan::predict_memory(req, l).worst().params, worst_p) << "zero " << zero;
    }
  }
}

// --grad-dtype bf16 (parallel/grad_shard.h) at ZeRO 2-3: the gradient shard takes 2 bytes an
// element, exactly, everything else as with fp32 gradients; during the step the fp32 buckets
// come on top as before. plan::predict_memory's gradients (shard + two buckets) fall by exactly
// 2 bytes a worst-rank shard element, and its parameters and optimizer state do not move.
// ZeRO 0-1: the flat gradient buffer in 2 bytes an element at rest, and during the step the
// largest layer group's fp32 working buffer on top (the tracker's peak and the planner exactly).
TEST(DpMemory, SixteenBitGradientsTakeTwoBytesPerShardElement) {
  const double N = dp_mesh().size();
  for (int zero = 0; zero <= 3; ++zero) {
    std::map<GradDType, std::array<double, 3>> at_rest;
    std::map<GradDType, double> peak_comm;
    double shard = 0, psi = 0, wire_cap = 0;
    for (GradDType d : {GradDType::kFp32, GradDType::kBf16}) {
      MemoryTracker t;
      EngineOptions o = options(zero, 0.02);
      o.precision = kernels::Precision::kBf16;
      o.grad_dtype = d;
      Engine e(dp_mesh(), model(), o, t, kBatch, kSeq, 2);
      e.initialize(1);
      e.train_step(batch_for(0, e.config().vocab_size), kLr);
      // ZeRO 0-1: the flat gradient buffer (every trained element) is what is stored.
      shard = static_cast<double>(zero >= 2 ? e.data_parallel()->layout().numel() : e.model().params().grad_numel());
      if (d == GradDType::kBf16 && zero < 2) {
        // During the step: the largest layer group's fp32 working buffer on top, one at a time.
        const double working = static_cast<double>(group_working_elems(e.model().params()));
        EXPECT_EQ(static_cast<double>(t.peak(MemCategory::kGradients)), 2 * shard + 4 * working) << "zero " << zero;
      }
      peak_comm[d] = static_cast<double>(t.peak(MemCategory::kCommBuffers));
      psi = static_cast<double>(e.model().params().grad_numel());
      int64_t max_param = 0;
      for (const nn::ParamInfo& p : e.model().params().infos()) max_param = std::max(max_param, p.numel);
      wire_cap = std::max(0.02 * 1024 * 1024 / 4, static_cast<double>(max_param));  // a bucket's elements at most
      at_rest[d] = {static_cast<double>(t.current(MemCategory::kParameters)),
                    static_cast<double>(t.current(MemCategory::kGradients)),
                    static_cast<double>(t.current(MemCategory::kOptimizerState))};
    }
    if (zero < 2) {
      // The dp sum's fp32 wire buffers: at most two in flight plus the one being launched, never
      // the whole gradient (which would undo the saving).
      EXPECT_LE(peak_comm[GradDType::kBf16], peak_comm[GradDType::kFp32] + 4 * 3 * wire_cap) << "zero " << zero;
      EXPECT_LT(peak_comm[GradDType::kBf16] - peak_comm[GradDType::kFp32], 4 * psi) << "zero " << zero;
    }
    EXPECT_EQ(at_rest[GradDType::kFp32][1], 4 * shard) << "zero " << zero;
    EXPECT_EQ(at_rest[GradDType::kBf16][1], 2 * shard) << "zero " << zero;
    EXPECT_EQ(at_rest[GradDType::kBf16][0], at_rest[GradDType::kFp32][0]) << "zero " << zero;
    EXPECT_EQ(at_rest[GradDType::kBf16][2], at_rest[GradDType::kFp32][2]) << "zero " << zero;
    plan::PlanRequest req;
    req.model = model();
    req.world = static_cast<int>(N);
    req.batch_size = kBatch;
    req.seq_len = kSeq;
    req.bucket_mb = 0.02;
    req.precision = kernels::Precision::kBf16;
    plan::Layout l;
    l.dp = static_cast<int>(N);
    l.zero = zero;
    l.micro_batches = 2;
    const plan::MemoryBreakdown f = plan::predict_memory(req, l).worst();
    req.grad_dtype = GradDType::kBf16;
    const plan::MemoryBreakdown h = plan::predict_memory(req, l).worst();
    double most = shard;  // the planner's worst rank holds the largest shard
    dp_mesh().world().allreduce(std::span<double>(&most, 1), comm::ReduceOp::kMax).wait();
    if (zero >= 2) {
      EXPECT_EQ(f.grads - h.grads, 2 * most) << "zero " << zero;
    } else {  // the step's peak: the 16-bit buffer and the largest group's fp32 working buffer
      nn::Model m(model(), nn::TpContext{}, nn::StageSpec{});
      EXPECT_EQ(h.grads, 2 * shard + 4 * static_cast<double>(group_working_elems(m.params()))) << "zero " << zero;
    }
    EXPECT_EQ(h.params, f.params) << "zero " << zero;
    EXPECT_EQ(h.optimizer, f.optimizer) << "zero " << zero;
    if (is_rank0()) {
      std::printf("[dp %.0f bf16 grads] zero %d  shard %.0f  gradients at rest %.0f (fp32: %.0f)  plan %.0f (fp32: %.0f)\n", N,
                  zero, shard, at_rest[GradDType::kBf16][1], at_rest[GradDType::kFp32][1], h.grads, f.grads);
    }
  }
}

// --offload optimizer under bf16 at ZeRO 1-2: the sharded master's fp32 shard joins the moments
// in the offload file. At rest after a step the tracker holds the 16-bit copy and the value-read
// parameters' fp32 values as parameters (nothing of the master), the flat gradients (ZeRO-1) or
// the gradient shard, and three staging blocks of three parts (two where the rank's shard holds
// no master element); `offloaded` is 8 bytes per shard
// element plus 4 per master element. The planner (and so the start-up memory check) says the
// same for its worst rank: the largest master shard of any dp rank, on disk.
TEST(DpMemory, OffloadedMasterIsOnDiskNotResident) {
  const double N = dp_mesh().size();
  const std::string dir = "/tmp/trident-dpmem-" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  constexpr int kBlockKib = 16;
  for (int zero = 1; zero <= 2; ++zero) {
    MemoryTracker t;
    EngineOptions o = options(zero, 0.02);
    o.precision = kernels::Precision::kBf16;
    o.offload = optim::OffloadOptions{optim::OffloadKind::kOptimizer, dir, kBlockKib};
    Engine e(dp_mesh(), model(), o, t, kBatch, kSeq, 1);
    e.initialize(1);
    e.train_step(batch_for(0, e.config().vocab_size), kLr);
    const nn::ParameterSet& ps = e.model().params();
    ASSERT_NE(e.data_parallel()->master(), nullptr);
    const double psi = static_cast<double>(ps.total_numel());
    const double shard = static_cast<double>(e.data_parallel()->layout().numel());
    int64_t operand = 0;
    for (const auto& [lo, hi] : operand_only_runs(ps)) operand += hi - lo;
    const int64_t mine = operand_only_elems(ps, e.data_parallel()->layout().pieces());
    const double want_p = 2 * psi + 4 * static_cast<double>(psi - operand);
    const double want_g = zero >= 2 ? 4 * shard : 4 * psi;
    // A rank whose shard holds no operand-only element (at dp 4, the one holding wte) keeps two parts.
    const double want_o = 3.0 * (mine > 0 ? 3 : 2) * kBlockKib * 1024;
    const double want_off = 8 * shard + 4 * static_cast<double>(mine);
    const double got_p = static_cast<double>(t.current(MemCategory::kParameters));
    const double got_off = static_cast<double>(t.current(MemCategory::kOffloaded));
    if (is_rank0()) {
      std::printf("[dp %.0f bf16 offload] zero %d  Psi %.0f  params %.0f (%.3f bytes/param)  offloaded %.0f\n", N, zero,
                  psi, got_p, got_p / psi, got_off);
    }
    EXPECT_EQ(got_p, want_p) << "zero " << zero;
    EXPECT_EQ(static_cast<double>(t.current(MemCategory::kGradients)), want_g) << "zero " << zero;
    EXPECT_EQ(static_cast<double>(t.current(MemCategory::kOptimizerState)), want_o) << "zero " << zero;
    EXPECT_EQ(got_off, want_off) << "zero " << zero;
    plan::PlanRequest req;
    req.model = model();
    req.world = static_cast<int>(N);
    req.batch_size = kBatch;
    req.seq_len = kSeq;
    req.precision = kernels::Precision::kBf16;
    req.offload_optimizer = true;
    req.offload_block_bytes = kBlockKib * 1024.0;
    plan::Layout l;
    l.dp = static_cast<int>(N);
    l.zero = zero;
    int64_t most = mine;
    dp_mesh().world().allreduce(std::span<int64_t>(&most, 1), comm::ReduceOp::kMax).wait();
    const plan::MemoryBreakdown p = plan::predict_memory(req, l).worst();
    EXPECT_EQ(p.params, want_p) << "zero " << zero;
    EXPECT_EQ(p.optimizer, 3.0 * (most > 0 ? 3 : 2) * kBlockKib * 1024) << "zero " << zero;
    // The planner's worst rank: the first dp rank's shard (the ceiling) and the largest master.
    const double worst_shard = std::ceil(psi / N);
    EXPECT_EQ(p.offloaded, 8 * worst_shard + 4 * static_cast<double>(most)) << "zero " << zero;
  }
  std::filesystem::remove_all(dir);
}

// A checkpoint's logical tensors (values and both moments) are the same whichever layout wrote
// them, and load into any other layout: train 3 steps in layout A, move the state into layout B
// and continue; compare with A continuing.
TEST(DpCheckpoint, StateMovesBetweenLayouts) {
  auto state_of = [](Engine& e) {
    auto all = gather_all(e);
    for (int kind = 0; kind < 2; ++kind) {
      for (auto& [name, v] : gather_all(e, true, kind)) all[name + (kind ? ".v" : ".m")] = std::move(v);
    }
    return all;
  };
  auto bcast = [](std::map<std::string, std::vector<float>>& m, const std::vector<std::pair<std::string, Shape>>& names) {
    for (const auto& [name, shape] : names) {
      for (const char* suffix : {"", ".m", ".v"}) {
        std::vector<float>& v = m[name + suffix];
        v.resize(static_cast<std::size_t>(shape_numel(shape)));
        dp_mesh().world().broadcast(std::span<float>(v), 0).wait();
      }
    }
  };
  for (auto [za, zb] : {std::pair{3, 0}, std::pair{0, 2}, std::pair{1, 3}}) {
    MemoryTracker ta, tb;
    Engine a(dp_mesh(), model(), options(za), ta, kBatch, kSeq, 1);
    a.initialize(7);
    for (int s = 0; s < 3; ++s) a.train_step(batch_for(s, a.config().vocab_size), kLr);
    auto st = state_of(a);
    const auto names = logical_params(a);
    bcast(st, names);
    Engine b(dp_mesh(), model(), options(zb), tb, kBatch, kSeq, 1);
    for (const auto& [name, shape] : names) {
      b.load_param(name, st[name].data());
      b.load_optimizer_state(name, 0, st[name + ".m"].data());
      b.load_optimizer_state(name, 1, st[name + ".v"].data());
    }
    b.set_optimizer_step(a.optimizer_step());
    auto st_b = state_of(b);
    if (is_rank0()) {
      for (auto& [k, v] : st) ASSERT_EQ(v, st_b[k]) << k << " zero " << za << " -> " << zb;
    }
    for (int s = 3; s < 5; ++s) {
      const double la = a.train_step(batch_for(s, a.config().vocab_size), kLr).loss;
      const double lb = b.train_step(batch_for(s, b.config().vocab_size), kLr).loss;
      EXPECT_NEAR(la, lb, 1e-5 * std::fabs(la)) << "zero " << za << " -> " << zb;
    }
    for (Engine* e : {&a, &b}) {
      const test::ReplicaMismatch rm = test::compare_dp_replicas(*e);
      EXPECT_EQ(rm.elements, 0) << "zero " << za << " -> " << zb << ": dp replicas differ, first " << rm.first;
    }
  }
}

// The replica comparison can fail: one bit of one element changed on dp rank 1 is counted
// (once, by every rank), at ZeRO 0 and 1 (where every rank holds every value).
TEST(DpReplicas, OneFlippedBitOnOneReplicaIsFound) {
  for (int zero : {0, 1}) {
    MemoryTracker t;
    Engine e(dp_mesh(), model(), options(zero), t, kBatch, kSeq, 1);
    e.initialize(3);
    e.train_step(batch_for(0, e.config().vocab_size), kLr);
    ASSERT_EQ(test::compare_dp_replicas(e).elements, 0) << "zero " << zero;
    nn::ParameterSet& ps = e.model().params();
    const int id = ps.size() / 2;
    if (dp_mesh().dp().rank() == 1) {
      float* v = ps.data(id) + 3;
      *v = std::bit_cast<float>(std::bit_cast<uint32_t>(*v) ^ 1u);
    }
    const test::ReplicaMismatch rm = test::compare_dp_replicas(e);
    EXPECT_EQ(rm.elements, 1) << "zero " << zero;
    if (dp_mesh().dp().rank() == 1) {
      EXPECT_NE(rm.first.find(ps.info(id).name + "[3] on dp rank 1"), std::string::npos) << rm.first;
    }
  }
}

TEST(DpBadInput, BatchNotDivisibleByDp) {
  MemoryTracker t;
  const int n = dp_mesh().size();
  try {
    Engine e(dp_mesh(), model(), options(0), t, n * 3 + 1, kSeq, 1);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fmt::format("not divisible by dp {}", n)), std::string::npos) << e.what();
  }
  try {
    Engine e(dp_mesh(), model(), options(4), t, kBatch, kSeq, 1);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ZeRO stage 4"), std::string::npos) << e.what();
  }
}

TEST(DpBadInput, RanksWithDifferentConfigsAreNamed) {
  comm::Communicator& w = dp_mesh().world();
  const uint64_t hash = w.rank() == 1 ? 0xbad : 0x600d;  // rank 1 was started differently
  try {
    comm::check_same_across_ranks(w, "the run configuration", hash);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    // The groups are listed by hash (0xbad < 0x600d): rank 1 alone, then everyone else.
    std::string others = "0";
    for (int r = 2; r < w.size(); ++r) others += fmt::format(", {}", r);
    const std::string want = fmt::format("ranks of group {} disagree on the run configuration: ranks [1] have "
                                         "0000000000000bad; ranks [{}] have 000000000000600d.",
                                         w.name(), others);
    const std::string msg = e.what();
    EXPECT_NE(msg.find(want), std::string::npos) << msg << "\nwanted: " << want;
  }
}

}  // namespace
}  // namespace trident::parallel

int main(int argc, char** argv) {
  return trident::test::run_tests_on_every_rank(argc, argv, {}, [] {
    trident::parallel::g_world_mesh.reset();
    trident::parallel::g_self_mesh.reset();
  });
}
