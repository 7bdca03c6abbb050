// A real client of the in-process backend (comm/in_process.h): the Engine's data parallelism
// (DDP buckets overlapping backward, ZeRO 1-3) with its dp ranks as threads of this process,
// against the same Engine on one rank. The same bounds as tests/mpi/dp_equivalence_test.cpp
// (only the order of additions differs: each rank sums its own rows, then the dp reduction adds
// the N partial sums; see equivalence_bounds.h), and every dp replica's weights bitwise equal
// to dp rank 0's. No mpirun.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "comm/in_process.h"
#include "comm/mesh.h"
#include "kernels/kernels.h"
#include "nn/model_config.h"
#include "parallel/engine.h"
#include "../mpi/equivalence_bounds.h"
#include "../mpi/replica_check.h"
#include "../mpi/synthetic_batch.h"

namespace trident::parallel {
namespace {

constexpr int kSteps = 4;
constexpr int64_t kBatch = 8, kSeq = 16;
constexpr float kLr = 1e-3f;
constexpr float kEps = 1e-6f;  // AdamW's epsilon (dp_equivalence_test.cpp says why not 1e-8)

comm::CommOptions test_options() {
  comm::CommOptions o;
  o.timeout_s = 120.0;
  o.on_timeout = comm::TimeoutAction::kThrow;
  return o;
}

nn::ModelConfig model() { return nn::model_preset("tiny"); }

// Trains kSteps on `dp` thread-ranks; returns world rank 0's curves and final weights.
test::RunCurves train(int dp, int zero) {
  test::RunCurves out;
  std::mutex m;
  comm::run_in_process(dp, [&](comm::Communicator& launcher) {
    comm::Mesh mesh(launcher.split(0, launcher.rank(), "world"), comm::MeshShape{1, dp, 1});
    EngineOptions o;
    o.zero = zero;
    o.bucket_mb = 0.05;  // several buckets, so communication overlaps backward
    o.grad_clip = 1.0;
    o.adamw.eps = kEps;
    MemoryTracker tracker;
    Engine e(mesh, model(), o, tracker, kBatch, kSeq, 1);
    e.initialize(1234);
    test::RunCurves r;
    for (int s = 0; s < kSteps; ++s) {
      StepStats st = e.train_step(test::synthetic_batch(s, e.config().vocab_size, kSeq), kLr);
      r.losses.push_back(st.loss);
      r.norms.push_back(st.grad_norm);
    }
    const test::ReplicaMismatch rm = test::compare_dp_replicas(e);
    EXPECT_EQ(rm.elements, 0) << "dp " << dp << " zero " << zero << ": replicas differ, first " << rm.first;
    for (const nn::ParamInfo& p : e.model().params().infos()) {
      std::vector<float> v(static_cast<std::size_t>(shape_numel(p.logical_shape)));
      e.gather_param(p.name, p.logical_shape, v.data());  // collective
      r.weights[p.name] = std::move(v);
    }
    if (mesh.rank() == 0) {
      std::lock_guard lock(m);
      out = std::move(r);
    }
  }, test_options());
  return out;
}

class InProcessDp : public testing::TestWithParam<std::pair<int, int>> {};

TEST_P(InProcessDp, MatchesOneRankWithinTheFp32Bounds) {
  kernels::set_num_threads(1);  // the ranks are the parallelism
  const auto [dp, zero] = GetParam();
  static const test::RunCurves reference = train(1, 0);
  const test::RunCurves got = train(dp, zero);
  const test::EquivalenceBounds b{static_cast<double>(model().vocab_size),
                                  static_cast<double>(kBatch * kSeq), kLr, kEps};
  const std::string what = "dp " + std::to_string(dp) + " zero " + std::to_string(zero);
  test::expect_curves_match(got, reference, b, what);
  const double bound = b.weights(reference);
  double max_abs = 0.0;
  for (const auto& [name, w] : reference.weights) {
    const std::vector<float>& g = got.weights.at(name);
    ASSERT_EQ(g.size(), w.size()) << name;
    for (std::size_t i = 0; i < w.size(); ++i) max_abs = std::max(max_abs, std::fabs(double(g[i]) - w[i]));
  }
  EXPECT_LE(max_abs, bound) << what;
}

INSTANTIATE_TEST_SUITE_P(Layouts, InProcessDp,
                         testing::Values(std::pair{2, 0}, std::pair{4, 0}, std::pair{4, 1}, std::pair{2, 3}));

}  // namespace
}  // namespace trident::parallel
