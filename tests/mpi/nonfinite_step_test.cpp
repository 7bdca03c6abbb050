// Poisoned steps: a step whose loss or gradient norm is not finite on some rank is skipped on
// every rank, for every kind of layout (DDP, ZeRO 1-3, tp, pp, mixed). The skipped step must
// leave no trace: weights, both AdamW moments and the Adam step counter are bitwise what they
// were, and the run then continues exactly as a run that never took the poisoned step (same
// layout, so bitwise: the same operations in the same order). And a checkpoint is never written
// from non-finite weights or moments, even when only one rank's shard holds the NaN.
// ranks: 2 4
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ckpt/checkpoint.h"
#include "comm/mpi_backend.h"
#include "core/check.h"
#include "comm/mesh.h"
#include "nn/model_config.h"
#include "parallel/engine.h"
#include "train/checkpointing.h"
#include "mpi_gtest_main.h"
#include "synthetic_batch.h"

namespace trident::parallel {
namespace {

constexpr int64_t kBatch = 8, kSeq = 16;
constexpr float kLr = 1e-3f;

struct Layout {
  comm::MeshShape shape;  // pp, dp, tp
  int zero;
  std::string name;
};

int world_size() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

std::vector<Layout> layouts() {
  if (world_size() == 2) {
    return {{{1, 2, 1}, 0, "dp2"},   {{1, 2, 1}, 1, "dp2 zero1"}, {{1, 2, 1}, 2, "dp2 zero2"},
            {{1, 2, 1}, 3, "dp2 zero3"}, {{1, 1, 2}, 0, "tp2"},   {{2, 1, 1}, 0, "pp2"}};
  }
  return {{{2, 2, 1}, 1, "pp2 dp2 zero1"}, {{1, 2, 2}, 2, "dp2 tp2 zero2"},
          {{2, 1, 2}, 0, "pp2 tp2"},       {{1, 4, 1}, 3, "dp4 zero3"}};
}

// Everything a step may change, gathered to world rank 0: weights, exp_avg, exp_avg_sq by
// name, and the Adam step counter (every rank).
struct State {
  std::map<std::string, std::vector<float>> tensors;
  int64_t adam_step = -1;
};

State gather_state(Engine& e) {
  State s;
  for (const ckpt::TensorSpec& spec : nn::model_tensor_specs(e.config())) {
    const auto n = static_cast<std::size_t>(shape_numel(spec.shape));
    std::vector<float> v(n), m(n), q(n);
    e.gather_param(spec.name, spec.shape, v.data());
    e.gather_optimizer_state(spec.name, spec.shape, 0, m.data());
    e.gather_optimizer_state(spec.name, spec.shape, 1, q.data());
    s.tensors[spec.name] = std::move(v);
    s.tensors[spec.name + ".exp_avg"] = std::move(m);
    s.tensors[spec.name + ".exp_avg_sq"] = std::move(q);
  }
  s.adam_step = e.optimizer_step();
  return s;
}

bool rank0() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r == 0;
}

// Bitwise (NaN-safe) equality of two gathered states; names the first tensor that differs.
std::string first_difference(const State& a, const State& b) {
  if (a.adam_step != b.adam_step) return "adam step " + std::to_string(a.adam_step) + " vs " + std::to_string(b.adam_step);
  if (!rank0()) return {};
  for (const auto& [name, va] : a.tensors) {
    const std::vector<float>& vb = b.tensors.at(name);
    if (std::memcmp(va.data(), vb.data(), va.size() * sizeof(float)) != 0) return name;
  }
  return {};
}

// The full logical tensor `name` on every rank (gather to rank 0, then broadcast).
std::vector<float> logical_everywhere(Engine& e, const std::string& name) {
  for (const ckpt::TensorSpec& spec : nn::model_tensor_specs(e.config())) {
    if (spec.name != name) continue;
    std::vector<float> v(static_cast<std::size_t>(shape_numel(spec.shape)));
    e.gather_param(spec.name, spec.shape, v.data());
    MPI_Bcast(v.data(), static_cast<int>(v.size()), MPI_FLOAT, 0, MPI_COMM_WORLD);
    return v;
  }
  ADD_FAILURE() << "no parameter " << name;
  return {};
}

constexpr int kMicroBatches = 2;

EngineOptions options(int zero) {
  EngineOptions o;
  o.zero = zero;
  o.grad_clip = 1.0;
  return o;
}

BatchFn batch(int step) { return test::synthetic_batch(step, nn::model_preset("tiny").vocab_size, kSeq); }

// Runs: a good step, a step with `poison` (one element of one parameter) made non-finite,
// the parameter restored, a good step. Compares with a run that takes only the good steps.
void check_layout(const Layout& l, const std::string& poison, float bad_value) {
  SCOPED_TRACE(l.name + ", " + poison + " = " + std::to_string(bad_value));
  comm::Mesh mesh(comm::make_mpi_communicator(MPI_COMM_WORLD, "world", test::aborting_after(60.0)), l.shape);
  MemoryTracker t1, t2;
  Engine e(mesh, nn::model_preset("tiny"), options(l.zero), t1, kBatch, kSeq, kMicroBatches);
  e.initialize(99);
  EXPECT_FALSE(e.train_step(batch(0), kLr).skipped);
  std::vector<float> good = logical_everywhere(e, poison), bad = good;
  bad[1] = bad_value;  // wpe: position 0, which every sequence uses
  e.load_param(poison, bad.data());
  const State before = gather_state(e);
  const StepStats poisoned = e.train_step(batch(1), kLr);
  EXPECT_TRUE(poisoned.skipped) << "loss " << poisoned.loss << " grad norm " << poisoned.grad_norm;
  EXPECT_FALSE(std::isfinite(poisoned.loss) && std::isfinite(poisoned.grad_norm));
  EXPECT_EQ(first_difference(gather_state(e), before), "") << "changed by the skipped step";
  EXPECT_EQ(e.optimizer_step(), 1);
  e.load_param(poison, good.data());
  const StepStats after = e.train_step(batch(2), kLr);
  EXPECT_FALSE(after.skipped);
  EXPECT_TRUE(std::isfinite(after.loss) && std::isfinite(after.grad_norm));

  // The same layout without the poisoned step: batches 0 and 2 only.
  Engine ref(mesh, nn::model_preset("tiny"), options(l.zero), t2, kBatch, kSeq, kMicroBatches);
  ref.initialize(99);
  ref.train_step(batch(0), kLr);
  const StepStats ref_after = ref.train_step(batch(2), kLr);
  EXPECT_EQ(after.loss, ref_after.loss);
  EXPECT_EQ(after.grad_norm, ref_after.grad_norm);
  EXPECT_EQ(first_difference(gather_state(e), gather_state(ref)), "")
      << "the run after a skipped step differs from one that never took it";
}

TEST(NonfiniteStep, SkippedOnEveryRankAndLeavesNoTrace) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  for (const Layout& l : layouts()) {
    // wpe lives on the first pipeline stage (the loss is computed on the last), ln_f on the
    // last; a NaN and an inf.
    check_layout(l, "wpe.weight", nan);
    check_layout(l, "ln_f.bias", inf);
  }
}

// A fresh directory made by rank 0, its name known to every rank.
std::string shared_temp_dir() {
  std::vector<char> name(256, 0);
  if (rank0()) {
    std::string t = (std::filesystem::temp_directory_path() / "trident_nonfinite_XXXXXX").string();
    EXPECT_NE(mkdtemp(t.data()), nullptr);
    std::copy(t.begin(), t.end(), name.begin());
  }
  MPI_Bcast(name.data(), static_cast<int>(name.size()), MPI_CHAR, 0, MPI_COMM_WORLD);
  return name.data();
}

// The message of the trident::Error `fn` throws, "" when it throws none.
template <class Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const trident::Error& e) {
    return e.what();
  }
  return "";
}

TEST(NonfiniteState, CheckpointIsRefusedAndTheLastOneStaysLatest) {
  for (const Layout& l : layouts()) {
    SCOPED_TRACE(l.name);
    comm::Mesh mesh(comm::make_mpi_communicator(MPI_COMM_WORLD, "world", test::aborting_after(60.0)), l.shape);
    MemoryTracker t;
    Engine e(mesh, nn::model_preset("tiny"), options(l.zero), t, kBatch, kSeq, kMicroBatches);
    e.initialize(5);
    e.train_step(batch(0), kLr);
    const std::string root = shared_temp_dir();
    EXPECT_EQ(e.find_nonfinite_state(), "");
    train::save_checkpoint(e, root, 1, nlohmann::json::object());
    MPI_Barrier(MPI_COMM_WORLD);

    // One element of ln_f.bias's exp_avg_sq: the end of the flat buffer, so under ZeRO only the
    // last dp rank's shard holds it (and under pp only the last stage).
    const Shape shape{nn::model_preset("tiny").n_embd};
    std::vector<float> v(static_cast<std::size_t>(shape[0]));
    e.gather_optimizer_state("ln_f.bias", shape, 1, v.data());
    MPI_Bcast(v.data(), static_cast<int>(v.size()), MPI_FLOAT, 0, MPI_COMM_WORLD);
    const std::vector<float> good = v;
    v.back() = std::numeric_limits<float>::quiet_NaN();
    e.load_optimizer_state("ln_f.bias", 1, v.data());
    const std::string err = error_of([&] { train::save_checkpoint(e, root, 2, nlohmann::json::object()); });
    EXPECT_NE(err.find("not writing the checkpoint of step 2"), std::string::npos) << err;
    EXPECT_NE(err.find("ln_f.bias (exp_avg_sq)"), std::string::npos) << err;
    if (l.name == "dp2 zero1") {
      EXPECT_NE(err.find("on rank 1"), std::string::npos) << err;
    }
    e.load_optimizer_state("ln_f.bias", 1, good.data());

    // A weight, on the first stage.
    std::vector<float> w = logical_everywhere(e, "wpe.weight");
    w[3] = std::numeric_limits<float>::infinity();
    e.load_param("wpe.weight", w.data());
    const std::string err2 = error_of([&] { train::save_checkpoint(e, root, 3, nlohmann::json::object()); });
    EXPECT_NE(err2.find("wpe.weight (weights)"), std::string::npos) << err2;

    MPI_Barrier(MPI_COMM_WORLD);
    if (rank0()) {
      std::ifstream latest(root + "/latest");
      std::string name;
      latest >> name;
      EXPECT_EQ(name, "step_00000001");
      EXPECT_FALSE(std::filesystem::exists(root + "/step_00000002"));
      EXPECT_FALSE(std::filesystem::exists(root + "/step_00000003"));
      std::size_t entries = 0;
      for ([[maybe_unused]] const auto& f : std::filesystem::directory_iterator(root)) ++entries;
      EXPECT_EQ(entries, 2u) << "only step_00000001 and latest (no staging left)";
      std::filesystem::remove_all(root);
    }
    MPI_Barrier(MPI_COMM_WORLD);
  }
}

}  // namespace
}  // namespace trident::parallel

int main(int argc, char** argv) { return trident::test::run_tests_on_every_rank(argc, argv); }
