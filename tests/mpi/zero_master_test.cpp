// ZeRO-1/2's sharded fp32 master (parallel/zero_master.h, EngineOptions::shard_master) against
// the same layout holding the full fp32 values on every rank: bitwise the same losses, grad
// norms, final weights and both AdamW moments (gathered as a checkpoint gathers them), in bf16
// (nearest and stochastic rounding) and fp16, for GPT-2 (tied embedding) and Llama (untied LM
// head), with 2 micro-batches at ZeRO-2, and after moving the state into a fresh sharded-master
// engine mid-run (load, then the copy remade before the next step). Nothing is approximated:
// the master's elements get AdamW's elementwise update from the same gradients, the 16-bit copy
// is rounded with the same keys (logical indices), so any difference is a bug. Memory: the
// parameters' bytes are exactly 2 Psi (the copy) + 4 Psi_v (value-read, full) + 4 x this rank's
// shard of the operand-only parameters.
// --offload optimizer (the "_offload" cases): the master shard lives in the offload file with the
// moments (16 KiB blocks, so runs of the master cross blocks and some blocks hold none), the
// copy rounded from each block as it streams through the update; against the same full-fp32
// reference without offload, bitwise the same, and after the mid-run move (the load writes the
// store, the copy is then read back from it). Memory: the parameters' bytes drop by the master,
// `offloaded` holds 8 bytes per shard element plus 4 per master element, and the staging blocks
// hold three parts; the non-finite check finds a NaN loaded into the offloaded master.
// ranks: 2 3
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <unistd.h>
#include <memory>
#include <string>
#include <vector>

#include "comm/mesh.h"
#include "comm/mpi_backend.h"
#include "nn/model_config.h"
#include "parallel/engine.h"
#include "parallel/zero_master.h"
#include "mpi_gtest_main.h"
#include "synthetic_batch.h"

namespace trident::parallel {
namespace {

constexpr int64_t kBatch = 12, kSeq = 16;
constexpr float kLr = 3e-3f;
constexpr int kSteps = 4;

std::unique_ptr<comm::Mesh> g_mesh;
comm::Mesh& mesh() {
  if (!g_mesh) {
    int n = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    g_mesh = std::make_unique<comm::Mesh>(
        comm::make_mpi_communicator(MPI_COMM_WORLD, "world", test::aborting_after(60.0)), comm::MeshShape{1, n, 1});
  }
  return *g_mesh;
}

nn::ModelConfig model(const std::string& name) {
  nn::ModelConfig c = nn::model_preset(name == "llama-untied" ? "llama-tiny" : name);
  if (name == "llama-untied") c.tie_word_embeddings = false;
  return c;
}

struct Case {
  std::string model;
  int zero;
  kernels::Precision precision;
  bool stochastic;
  int micro;
  bool offload = false;  // --offload optimizer: the master shard on disk
  std::string name() const {
    std::string s = model + "_zero" + std::to_string(zero) + "_" +
                    std::string(kernels::precision_names()[static_cast<int>(precision)]) +
                    (stochastic ? "_sr" : "") + "_micro" + std::to_string(micro) + (offload ? "_offload" : "");
    for (char& ch : s) ch = ch == '-' ? '_' : ch;
    return s;
  }
};

// This process's offload directory (the files are named by world rank; one directory per process
// keeps the cleanup local), removed at exit.
struct OffloadDir {
  std::filesystem::path path;
  OffloadDir() {
    path = std::filesystem::temp_directory_path() / ("trident-zero-master-" + std::to_string(::getpid()));
    std::filesystem::create_directories(path);
  }
  ~OffloadDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};
const std::string& offload_dir() {
  static const OffloadDir dir;
  return dir.path.native();
}
constexpr int kBlockKib = 16;

EngineOptions options(const Case& c, bool shard, bool offload = false) {
  EngineOptions o;
  o.zero = c.zero;
  o.precision = c.precision;
  o.stochastic_rounding = c.stochastic;
  o.shard_master = shard;
  if (offload) o.offload = optim::OffloadOptions{optim::OffloadKind::kOptimizer, offload_dir(), kBlockKib};
  o.bucket_mb = 0.02;  // several buckets
  // fp16: a scale the tiny model's gradients do not overflow at, so steps are applied (a
  // skipped one, which changes nothing, is what an overflow would give both runs alike).
  o.loss_scaler.initial_scale = 1024.0;
  return o;
}

using State = std::map<std::string, std::vector<float>>;

State state_of(Engine& e) {
  State s;
  for (const nn::ParamInfo& p : e.model().params().infos()) {
    for (int k = -1; k < 2; ++k) {
      std::vector<float> v(static_cast<std::size_t>(shape_numel(p.logical_shape)));
      if (k < 0) {
        e.gather_param(p.name, p.logical_shape, v.data());
      } else {
        e.gather_optimizer_state(p.name, p.logical_shape, k, v.data());
      }
      mesh().world().broadcast(std::span<float>(v), 0).wait();  // every rank compares rank 0's
      s[p.name + (k < 0 ? "" : k == 0 ? ".m" : ".v")] = std::move(v);
    }
  }
  return s;
}

struct MasterRun {
  std::vector<double> losses, norms;
  State state;
};

void step(Engine& e, int s, MasterRun& r) {
  const StepStats st = e.train_step(test::synthetic_batch(s, e.config().vocab_size, kSeq), kLr);
  r.losses.push_back(st.loss);
  r.norms.push_back(st.grad_norm);
}

// The sharded master (with c.offload as the case says), or the full fp32 values without offload.
MasterRun train(const Case& c, bool shard, int moved_at = -1) {
  MemoryTracker t;
  const bool offload = shard && c.offload;
  auto e = std::make_unique<Engine>(mesh(), model(c.model), options(c, shard, offload), t, kBatch, kSeq, c.micro);
  e->set_rounding_seed(77);
  e->initialize(5);
  MasterRun r;
  MemoryTracker t2;
  for (int s = 0; s < kSteps; ++s) {
    if (s == moved_at) {  // the state into a fresh engine, as a resume loads it
      const State st = state_of(*e);
      const int64_t updates = e->optimizer_step();
      e.reset();  // its offload file goes before the fresh engine takes the name
      auto f = std::make_unique<Engine>(mesh(), model(c.model), options(c, shard, offload), t2, kBatch, kSeq, c.micro);
      f->set_rounding_seed(77);
      for (const nn::ParamInfo& p : f->model().params().infos()) {
        f->load_param(p.name, st.at(p.name).data());
        f->load_optimizer_state(p.name, 0, st.at(p.name + ".m").data());
        f->load_optimizer_state(p.name, 1, st.at(p.name + ".v").data());
      }
      f->set_optimizer_step(updates);
      e = std::move(f);
    }
    step(*e, s, r);
  }
  r.state = state_of(*e);
  return r;
}

void expect_bitwise(const MasterRun& a, const MasterRun& b, const std::string& what) {
  ASSERT_EQ(a.losses.size(), b.losses.size());
  for (std::size_t s = 0; s < a.losses.size(); ++s) {
    EXPECT_EQ(std::bit_cast<uint64_t>(a.losses[s]), std::bit_cast<uint64_t>(b.losses[s]))
        << what << " loss at step " << s << ": " << a.losses[s] << " vs " << b.losses[s];
    EXPECT_EQ(std::bit_cast<uint64_t>(a.norms[s]), std::bit_cast<uint64_t>(b.norms[s]))
        << what << " grad norm at step " << s << ": " << a.norms[s] << " vs " << b.norms[s];
  }
  for (const auto& [name, va] : a.state) {
    const std::vector<float>& vb = b.state.at(name);
    ASSERT_EQ(va.size(), vb.size()) << name;
    int64_t differ = 0;
    for (std::size_t i = 0; i < va.size(); ++i) differ += std::bit_cast<uint32_t>(va[i]) != std::bit_cast<uint32_t>(vb[i]);
    EXPECT_EQ(differ, 0) << what << ": " << name << " differs in " << differ << " of " << va.size() << " elements";
  }
}

class ZeroMaster : public testing::TestWithParam<Case> {};

TEST_P(ZeroMaster, BitwiseTheFullFp32Values) {
  const Case& c = GetParam();
  const MasterRun full = train(c, false), sharded = train(c, true);
  ASSERT_GT(full.losses.front(), 0.0);
  expect_bitwise(sharded, full, c.name());
}

TEST_P(ZeroMaster, StateMovedIntoAFreshEngineMidRun) {
  const Case& c = GetParam();
  if (c.micro != 1) GTEST_SKIP() << "covered at micro 1";
  expect_bitwise(train(c, true, 2), train(c, false), c.name() + " moved at step 2");
}

std::vector<Case> cases() {
  using P = kernels::Precision;
  std::vector<Case> out;
  for (const char* m : {"tiny", "llama-untied"}) {
    for (int zero : {1, 2}) {
      out.push_back({m, zero, P::kBf16, false, 1});
      out.push_back({m, zero, P::kBf16, true, 1});
      out.push_back({m, zero, P::kFp16, false, 1});
    }
  }
  out.push_back({"tiny", 2, P::kBf16, true, 2});
  // The master offloaded: nearest and stochastic bf16, fp16, both models, both stages.
  out.push_back({"tiny", 1, P::kBf16, false, 1, true});
  out.push_back({"tiny", 2, P::kBf16, true, 2, true});
  out.push_back({"llama-untied", 1, P::kBf16, true, 1, true});
  out.push_back({"llama-untied", 2, P::kFp16, false, 1, true});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Layouts, ZeroMaster, testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.name(); });

// Bytes at rest after a step: the copy 2 Psi, the value-read parameters' full fp32 values, the
// master of this rank's operand-only shard; gradients and moments as without the master.
TEST(ZeroMasterMemory, ParametersTakeTwoPlusFourOverNBytesPerOperandOnlyElement) {
  for (int zero : {1, 2}) {
    MemoryTracker t;
    const Case c{"tiny", zero, kernels::Precision::kBf16, false, 1};
    Engine e(mesh(), model(c.model), options(c, true), t, kBatch, kSeq, 1);
    e.initialize(5);
    e.train_step(test::synthetic_batch(0, e.config().vocab_size, kSeq), kLr);
    const nn::ParameterSet& ps = e.model().params();
    const DataParallel& dp = *e.data_parallel();
    ASSERT_NE(dp.master(), nullptr);
    int64_t operand = 0;
    for (const auto& [lo, hi] : operand_only_runs(ps)) operand += hi - lo;
    const int64_t psi = ps.total_numel(), mine = operand_only_elems(ps, dp.layout().pieces());
    EXPECT_EQ(mine, dp.master()->numel());
    EXPECT_GT(operand, psi / 2) << "the layer matrices are most of the model";
    const double want = 2.0 * psi + 4.0 * (psi - operand) + 4.0 * mine;
    EXPECT_EQ(static_cast<double>(t.current(MemCategory::kParameters)), want) << "zero " << zero;
    if (mesh().rank() == 0) {
      std::printf("[dp %d] zero %d bf16 sharded master: parameters %zu B = %.3f bytes/param (full fp32 + copy: 6)\n",
                  mesh().size(), zero, t.current(MemCategory::kParameters),
                  static_cast<double>(t.current(MemCategory::kParameters)) / static_cast<double>(psi));
    }
  }
}

// --offload optimizer: the master leaves memory for the offload file's values part. At rest
// after a step the parameters hold the copy and the value-read values only; `offloaded` is both
// moments of the shard plus this rank's master; the optimizer's resident bytes are three staging
// blocks of three parts.
TEST(ZeroMasterMemory, OffloadedMasterLeavesTheCopyAndTheValueReadValues) {
  for (int zero : {1, 2}) {
    MemoryTracker t;
    const Case c{"tiny", zero, kernels::Precision::kBf16, false, 1, true};
    Engine e(mesh(), model(c.model), options(c, true, true), t, kBatch, kSeq, 1);
    e.initialize(5);
    e.train_step(test::synthetic_batch(0, e.config().vocab_size, kSeq), kLr);
    const nn::ParameterSet& ps = e.model().params();
    const DataParallel& dp = *e.data_parallel();
    ASSERT_NE(dp.master(), nullptr);
    ASSERT_TRUE(dp.master()->offloaded());
    int64_t operand = 0;
    for (const auto& [lo, hi] : operand_only_runs(ps)) operand += hi - lo;
    const int64_t psi = ps.total_numel(), mine = operand_only_elems(ps, dp.layout().pieces());
    const int64_t shard = dp.layout().numel();
    EXPECT_EQ(mine, dp.master()->numel());
    EXPECT_GT(mine, 0);
    EXPECT_EQ(static_cast<double>(t.current(MemCategory::kParameters)), 2.0 * psi + 4.0 * (psi - operand))
        << "zero " << zero;
    EXPECT_EQ(t.current(MemCategory::kOffloaded), static_cast<std::size_t>(8 * shard + 4 * mine)) << "zero " << zero;
    EXPECT_EQ(t.current(MemCategory::kOptimizerState), static_cast<std::size_t>(3 * 3 * kBlockKib * 1024))
        << "zero " << zero;
    // The non-finite check (run before every checkpoint) reads the master from the file: a NaN
    // loaded into the last layer matrix is found and named.
    EXPECT_EQ(e.find_nonfinite_state(), "");
    const nn::ParamInfo* last = nullptr;
    for (const nn::ParamInfo& p : ps.infos()) {
      if (p.operand_only) last = &p;
    }
    ASSERT_NE(last, nullptr);
    std::vector<float> v(static_cast<std::size_t>(shape_numel(last->logical_shape)));
    e.gather_param(last->name, last->logical_shape, v.data());
    mesh().world().broadcast(std::span<float>(v), 0).wait();
    v.back() = std::nanf("");
    e.load_param(last->name, v.data());
    const std::string found = e.find_nonfinite_state();
    EXPECT_NE(found.find(last->name + " (weights)"), std::string::npos) << found;
    if (mesh().rank() == 0) {
      std::printf("[dp %d] zero %d bf16 offloaded master: parameters %zu B = %.3f bytes/param, offloaded %zu B\n",
                  mesh().size(), zero, t.current(MemCategory::kParameters),
                  static_cast<double>(t.current(MemCategory::kParameters)) / static_cast<double>(psi),
                  t.current(MemCategory::kOffloaded));
    }
  }
}

}  // namespace
}  // namespace trident::parallel

int main(int argc, char** argv) {
  return trident::test::run_tests_on_every_rank(argc, argv, {}, [] { trident::parallel::g_mesh.reset(); });
}
