// The planner's optimizer offload: the disk time of the offloaded AdamW pass against its hand
// formula (8 bytes per shard element read and written once, the node's disk split over its
// ranks), the update's time as max(I/O, compute), the planner proposing offload only for
// layouts that do not fit without it, the "nothing fits" message naming offload's
// requirement, auto offloading the ZeRO-3 parameter shard only where optimizer offload does
// not fit (and at one dp rank, as ZeRO 3), and the disk probe (measured, removed afterwards,
// clear errors).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/check.h"
#include "plan/calibrate_disk.h"
#include "plan/planner.h"

namespace trident::plan {
namespace {

PlanRequest request(int world) {
  PlanRequest r;
  r.model = nn::model_preset("tiny");
  r.world = world;
  r.batch_size = 8;
  r.seq_len = 32;
  r.offload_block_bytes = 4096;  // staging (6 pages) well below tiny's moments
  return r;
}

MachineModel machine(int cores, double read_bw, double write_bw) {
  MachineModel m;
  m.cores = cores;
  m.comm.bandwidth = 1e18;
  m.comm.latency = 0;
  m.inter_node = m.comm;
  m.disk.read_bandwidth = read_bw;
  m.disk.write_bandwidth = write_bw;
  return m;
}

double psi(const PlanRequest& r, const Layout& l) {
  return static_cast<double>(predict_memory(r, l).params_by_pp_rank.at(0));
}

TEST(PlanOffload, DiskTimeIsTheMomentsReadAndWrittenAtTheSharedBandwidth) {
  DiskModel d;
  d.read_bandwidth = 2e9;
  d.write_bandwidth = 1e9;
  EXPECT_DOUBLE_EQ(offload_io_seconds(8e6, d, 1), 8e6 / 2e9 + 8e6 / 1e9);
  EXPECT_DOUBLE_EQ(offload_io_seconds(8e6, d, 4), 4 * (8e6 / 2e9 + 8e6 / 1e9));
  EXPECT_DOUBLE_EQ(offloaded_update_seconds(3.0, 1.0), 3.0);
  EXPECT_DOUBLE_EQ(offloaded_update_seconds(1.0, 3.0), 3.0);
  EXPECT_THROW(offload_io_seconds(8e6, DiskModel{}, 1), Error);
}

TEST(PlanOffload, TheUpdateTakesTheSlowerOfItsDiskTimeAndItsCompute) {
  PlanRequest r = request(1);
  const Layout plain;
  Layout off;
  off.offload = true;
  FlopComputeModel compute(r.model, 1e9, 1e9);
  const double P = psi(r, plain);
  const double opt = compute.optimizer(static_cast<int64_t>(P));
  // Slow disk: the I/O is the floor; the step grows by what it exceeds the compute by.
  const MachineModel slow = machine(1, 1e6, 0.5e6);
  const StepPrediction a = predict_step(r, plain, compute, slow), b = predict_step(r, off, compute, slow);
  const double io = 8 * P / 1e6 + 8 * P / 0.5e6;
  EXPECT_DOUBLE_EQ(b.offload_s, io);
  EXPECT_DOUBLE_EQ(a.offload_s, 0);
  EXPECT_NEAR(b.dedicated_s - a.dedicated_s, io - opt, 1e-9 * io);
  EXPECT_NEAR(b.step_s, b.dedicated_s + b.sync_s, 1e-12);
  // Fast disk: hidden behind the compute, the step is unchanged.
  const MachineModel fast = machine(1, 1e15, 1e15);
  const StepPrediction c = predict_step(r, plain, compute, fast), e = predict_step(r, off, compute, fast);
  EXPECT_LT(e.offload_s, opt);
  EXPECT_DOUBLE_EQ(e.step_s, c.step_s);
  // Offload without a known disk is refused, naming how to give it.
  try {
    predict_step(r, off, compute, machine(1, 0, 0));
    ADD_FAILURE() << "no error";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("--offload-dir"), std::string::npos) << err.what();
  }
}

TEST(PlanOffload, RanksOfANodeShareItsDisk) {
  PlanRequest r = request(2);
  Layout l;
  l.dp = 2;
  l.zero = 1;
  l.offload = true;
  FlopComputeModel compute(r.model, 1e9, 1e9);
  const double shard = std::ceil(psi(r, l) / 2);
  MachineModel one_node = machine(2, 1e6, 1e6);
  EXPECT_DOUBLE_EQ(predict_step(r, l, compute, one_node).offload_s, 2 * (8 * shard / 1e6 + 8 * shard / 1e6));
  MachineModel two_nodes = one_node;
  two_nodes.node_of_rank = {0, 1};
  EXPECT_DOUBLE_EQ(predict_step(r, l, compute, two_nodes).offload_s, 8 * shard / 1e6 + 8 * shard / 1e6);
}

// Two ranks on one core: the contended bound slows AdamW's compute to the rank's share (1/2)
// but not the disk, so the update there is max(disk time, 2 x compute).
TEST(PlanOffload, SharedCoresSlowTheUpdatesComputeNotItsDisk) {
  PlanRequest r = request(2);
  Layout plain;
  plain.dp = 2;
  Layout off = plain;
  off.offload = true;
  FlopComputeModel compute(r.model, 1e9, 1e9);
  const double P = psi(r, plain);  // ZeRO 0: the whole Ψ on each rank
  const double opt = compute.optimizer(static_cast<int64_t>(P));
  const MachineModel slow = machine(1, 1e6, 1e6);
  const StepPrediction a = predict_step(r, plain, compute, slow), b = predict_step(r, off, compute, slow);
  const double io = 2 * (8 * P / 1e6 + 8 * P / 1e6);  // two ranks share the disk
  ASSERT_GT(a.contended_s, 0);
  EXPECT_NEAR(b.contended_s - a.contended_s, io - 2 * opt, 1e-9 * io);
  const MachineModel fast = machine(1, 1e15, 1e15);
  EXPECT_DOUBLE_EQ(predict_step(r, off, compute, fast).contended_s, predict_step(r, plain, compute, fast).contended_s);
}

// The smallest resident total over the valid layouts, with or without offload.
double smallest(const PlanRequest& r, bool offload) {
  double best = 1e300;
  for (const Candidate& c : enumerate_layouts(r)) {
    if (!c.valid) continue;
    Layout l = c.layout;
    l.offload = offload;
    best = std::min(best, predict_memory(r, l).worst().total());
  }
  return best;
}

std::string error_of(const PlanRequest& r, ComputeModel& compute, const MachineModel& m) {
  try {
    make_plan(r, compute, m);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(PlanOffload, AutoProposesOffloadOnlyWhereTheLayoutDoesNotFitWithoutIt) {
  PlanRequest r = request(2);
  r.offload_auto = true;
  FlopComputeModel compute(r.model, 1e9, 1e9);
  const MachineModel m = machine(2, 1e9, 1e9);
  const double with = smallest(r, true), without = smallest(r, false);
  ASSERT_LT(with, without);
  // Between the two: only offloaded rows fit.
  r.memory_per_rank = 0.5 * (with + without);
  const Plan p = make_plan(r, compute, m);
  ASSERT_GT(p.fitting(), 0);
  for (const PlanRow& row : p.rows) {
    if (row.fits) {
      EXPECT_TRUE(row.layout.offload) << row.layout.train_flags();
    }
    if (row.layout.offload) {
      EXPECT_GT(row.step.offload_s, 0);
      EXPECT_NE(row.layout.train_flags().find("--offload optimizer"), std::string::npos);
    }
  }
  // Room for every layout: no row offloads.
  r.memory_per_rank = 0;
  for (const PlanRow& row : make_plan(r, compute, m).rows) EXPECT_FALSE(row.layout.offload);
  // A limit just above the smallest plain layout: that one fits as it is, the others offload
  // where that makes them fit.
  r.memory_per_rank = without;
  const Plan mixed = make_plan(r, compute, m);
  for (const PlanRow& row : mixed.rows) {
    Layout plain = row.layout;
    plain.offload = false;
    const bool plain_fits = predict_memory(r, plain).worst().total() <= r.memory_per_rank;
    EXPECT_EQ(row.layout.offload, !plain_fits) << row.layout.train_flags();
  }
  // Without the disk, auto offloads nothing, and the refusal says what offload would need.
  r.memory_per_rank = 0.5 * (with + without);
  const std::string unknown = error_of(r, compute, machine(2, 0, 0));
  EXPECT_NE(unknown.find("with --offload optimizer the smallest would need"), std::string::npos) << unknown;
  EXPECT_NE(unknown.find("plan with --offload-dir"), std::string::npos) << unknown;
  // Below even the offloaded requirement: refused, saying offload was counted.
  r.memory_per_rank = 0.5 * with;
  const std::string none = error_of(r, compute, m);
  EXPECT_NE(none.find("even with --offload optimizer"), std::string::npos) << none;
  EXPECT_NE(none.find("no layout of 2 ranks fits"), std::string::npos) << none;
}

// --offload auto at ZeRO 3: a ZeRO-3 layout that optimizer offload alone does not fit is tried
// with the parameter shard offloaded too, and listed so when that is smaller: its flags say
// optimizer+params and its disk holds 12 bytes per shard element (1.5x the moments). No other
// stage offloads the parameters. (On tiny the embeddings group is a quarter of the model, so tp
// and pp layouts stay smaller overall: this checks the ZeRO-3 rows, not the ranking.)
TEST(PlanOffload, AutoOffloadsTheParameterShardOfAZero3LayoutOptimizerOffloadDoesNotFit) {
  PlanRequest r = request(2);
  r.offload_auto = true;
  r.bucket_mb = 0.01;  // ZeRO-3's gradient working set: the largest parameter, not all of tiny
  FlopComputeModel compute(r.model, 1e9, 1e9);
  const MachineModel m = machine(2, 1e9, 1e9);
  Layout z3;
  z3.dp = 2;
  z3.zero = 3;
  z3.offload = true;
  const double opt = predict_memory(r, z3).worst().total();
  Layout zp = z3;
  zp.offload_params = true;
  const MemoryBreakdown params = predict_memory(r, zp).worst();
  ASSERT_LT(params.total(), opt);
  EXPECT_DOUBLE_EQ(params.offloaded, 1.5 * predict_memory(r, z3).worst().offloaded);
  r.memory_per_rank = 0.5 * (params.total() + opt);
  bool seen = false;
  for (const PlanRow& row : make_plan(r, compute, m).rows) {
    const Layout& l = row.layout;
    if (l.zero < 3) {
      EXPECT_FALSE(l.offload_params) << l.train_flags();
    }
    if (l.dp == 2 && l.zero == 3 && l.micro_batches == 1) {
      seen = true;
      EXPECT_TRUE(l.offload_params && row.fits) << l.train_flags();
      EXPECT_NE(l.train_flags().find("--offload optimizer+params"), std::string::npos) << l.train_flags();
    }
  }
  EXPECT_TRUE(seen);
  // With room for optimizer offload, no row offloads the parameters.
  r.memory_per_rank = opt;
  for (const PlanRow& row : make_plan(r, compute, m).rows) EXPECT_FALSE(row.layout.offload_params);
}

// --offload auto at one dp rank: the layouts there are ZeRO 0 (in memory the stages change
// nothing at dp 1), so before, auto tried optimizer offload at most and a model that fits only
// with its parameters on disk too was refused. Now such a layout is tried as ZeRO 3 with
// optimizer+params (the engine's parameter offload needs stage 3; the shard is the whole model)
// and listed that way, with that layout's flags; with room for optimizer offload it stays ZeRO 0
// (the faster way to fit).
TEST(PlanOffload, AutoTriesZero3WithTheParametersOffloadedAtOneRank) {
  PlanRequest r = request(1);
  r.offload_auto = true;
  r.bucket_mb = 0.01;  // ZeRO-3's gradient working set: the largest parameter, not all of tiny
  r.micro_batches = 1;  // one row per layout, whose totals are the two below
  r.model.n_layer = 16;  // layers enough that two groups in flight weigh less than the weights
  FlopComputeModel compute(r.model, 1e9, 1e9);
  const MachineModel m = machine(1, 1e9, 1e9);
  Layout opt;
  opt.offload = true;
  const double opt_total = predict_memory(r, opt).worst().total();
  Layout zp = opt;
  zp.zero = 3;
  zp.offload_params = true;
  const double zp_total = predict_memory(r, zp).worst().total();
  ASSERT_LT(zp_total, opt_total);
  r.memory_per_rank = 0.5 * (zp_total + opt_total);
  const Plan p = make_plan(r, compute, m);
  ASSERT_GT(p.fitting(), 0);
  for (const PlanRow& row : p.rows) {
    if (!row.fits) continue;
    const Layout& l = row.layout;
    EXPECT_TRUE(l.dp == 1 && l.zero == 3 && l.offload && l.offload_params) << l.train_flags();
    EXPECT_NE(l.train_flags().find("--zero 3"), std::string::npos) << l.train_flags();
    EXPECT_NE(l.train_flags().find("--offload optimizer+params"), std::string::npos) << l.train_flags();
    EXPECT_GT(row.step.param_read_s, 0) << l.train_flags();
    EXPECT_LE(row.memory.worst().total(), r.memory_per_rank);
  }
  // Room for optimizer offload: ZeRO 0 with the moments on disk, the parameters in memory.
  r.memory_per_rank = opt_total;
  const Plan q = make_plan(r, compute, m);
  ASSERT_GT(q.fitting(), 0);
  EXPECT_EQ(q.rows.front().layout.zero, 0);
  EXPECT_TRUE(q.rows.front().layout.offload);
  for (const PlanRow& row : q.rows) EXPECT_FALSE(row.layout.offload_params) << row.layout.train_flags();
  // Below even that: refused, naming the parameter offload it counted.
  r.memory_per_rank = 0.5 * zp_total;
  const std::string e = error_of(r, compute, m);
  EXPECT_NE(e.find("even with --offload optimizer+params"), std::string::npos) << e;
}

// bf16 at one rank: the one-rank layout is ZeRO 0, which keeps its fp32 values in memory with the
// moments on disk; ZeRO 1 there is the same math with the fp32 master on disk too, so an
// offloaded one-rank row takes it when smaller. By hand (tiny, 4 KiB blocks): ZeRO 0 holds 6
// bytes of parameters an element and 6 staging pages; ZeRO 1 the copy and the value-read values
// (2 + 4 Psi_v / Psi), 9 pages, and DataParallel's scratch copy of the tied embedding's gradient
// (Vp x C = 32,768 floats): 4 x 98,304 (the master) - 3 x 4096 - 4 x 32,768 = 249,856 bytes less.
// In fp32 there is no sharded master: the row stays ZeRO 0.
TEST(PlanOffload, Bf16AtOneRankOffloadsTheMasterAsZero1) {
  PlanRequest r = request(1);
  r.precision = kernels::Precision::kBf16;
  r.offload_auto = true;
  r.micro_batches = 1;
  FlopComputeModel compute(r.model, 1e9, 1e9);
  const MachineModel m = machine(1, 1e9, 1e9);
  Layout z0;
  z0.offload = true;
  Layout z1 = z0;
  z1.zero = 1;
  const double t0 = predict_memory(r, z0).worst().total(), t1 = predict_memory(r, z1).worst().total();
  EXPECT_DOUBLE_EQ(t0 - t1, 249856);
  r.memory_per_rank = 0.5 * (t0 + t1);
  const Plan p = make_plan(r, compute, m);
  ASSERT_GT(p.fitting(), 0);
  for (const PlanRow& row : p.rows) {
    if (!row.fits) continue;
    const Layout& l = row.layout;
    EXPECT_TRUE(l.dp == 1 && l.zero == 1 && l.offload && !l.offload_params) << l.train_flags();
    EXPECT_NE(l.train_flags().find("--zero 1"), std::string::npos) << l.train_flags();
    EXPECT_NE(l.train_flags().find("--offload optimizer"), std::string::npos) << l.train_flags();
  }
  r.precision = kernels::Precision::kFp32;
  r.memory_per_rank = predict_memory(r, z0).worst().total();
  const Plan q = make_plan(r, compute, m);
  ASSERT_GT(q.fitting(), 0);
  EXPECT_EQ(q.rows.front().layout.zero, 0) << q.rows.front().layout.train_flags();
  EXPECT_TRUE(q.rows.front().layout.offload);
}

// Staging blocks larger than the moments (tiny's 8Ψ ~ 1 MiB against 24 MiB of 4 MiB blocks):
// offload would not shrink any layout, so auto proposes none and the refusal says why.
TEST(PlanOffload, AutoSkipsOffloadThatWouldNotShrinkTheLayout) {
  PlanRequest r = request(2);
  r.offload_auto = true;
  r.offload_block_bytes = 4.0 * 1024 * 1024;
  FlopComputeModel compute(r.model, 1e9, 1e9);
  const MachineModel m = machine(2, 1e9, 1e9);
  const double without = smallest(r, false);
  ASSERT_GT(smallest(r, true), without);
  r.memory_per_rank = 1.5 * without;
  for (const PlanRow& row : make_plan(r, compute, m).rows) EXPECT_FALSE(row.layout.offload);
  r.memory_per_rank = 0.5 * without;
  const std::string e = error_of(r, compute, m);
  EXPECT_NE(e.find("outweigh the moments"), std::string::npos) << e;
  EXPECT_EQ(e.find("even with --offload optimizer"), std::string::npos) << e;
}

TEST(PlanOffload, DiskProbeMeasuresAndRemovesItsFile) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("trident_plan_offload_test_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const DiskCalibration c = calibrate_disk(dir.string(), 1 << 20, 4 << 20);
  EXPECT_GT(c.model.read_bandwidth, 0);
  EXPECT_GT(c.model.write_bandwidth, 0);
  EXPECT_DOUBLE_EQ(c.probe_bytes, 4 << 20);
  EXPECT_DOUBLE_EQ(c.request_bytes, 1 << 20);
  EXPECT_TRUE(fs::is_empty(dir));  // the probe is gone
  auto message = [](const std::string& d) {
    try {
      calibrate_disk(d, 1 << 20, 4 << 20);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(message((dir / "missing").string()).find("does not exist"), std::string::npos);
  std::ofstream((dir / "file").string()) << "x";
  EXPECT_NE(message((dir / "file").string()).find("is not a directory"), std::string::npos);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace trident::plan
