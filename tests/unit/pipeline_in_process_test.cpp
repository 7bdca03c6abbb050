// The pipeline executor (parallel/pipeline/executor.h) with its pp ranks as threads of this
// process (comm/in_process.h) and its pp group from a Mesh over the in-process world: every
// schedule (GPipe, 1F1B, interleaved 1F1B) at pp 2 and 4, a few micro-batch counts, a few AdamW
// steps of a tiny GPT, against the whole model on one rank accumulating the same
// micro-batches. The bounds are tests/mpi/pipeline_equivalence_test.cpp's, argued there: step 0
// bitwise for the loss and every gradient but the tied wte's (same kernels on the same
// micro-batches, one thread), wte's within 2 M u max |g| (its M head and M lookup parts added
// in another order); later steps loss relative 1e-5, gradients 1e-5 max |ref| + 1e-9 per
// tensor, final weights 1e-5. Also the send-progress probe (kAuto) runs over the in-process
// backend, and a stage that never answers is named by its neighbour's error. No mpirun.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "comm/in_process.h"
#include "comm/mesh.h"
#include "core/check.h"
#include "kernels/kernels.h"
#include "nn/model.h"
#include "optim/adamw.h"
#include "parallel/pipeline/executor.h"
#include "parallel/pipeline/partition.h"

namespace trident::pp {
namespace {

constexpr int64_t kB = 2, kT = 16;
constexpr int kSteps = 3;
constexpr uint64_t kSeed = 1234;
constexpr float kLr = 1e-3f;
constexpr double kU = 1.0 / (1 << 24);  // fp32 unit roundoff

comm::CommOptions test_options() {
  comm::CommOptions o;
  o.timeout_s = 60.0;
  o.on_timeout = comm::TimeoutAction::kThrow;
  return o;
}

nn::ModelConfig tiny() {
  nn::ModelConfig c;
  c.n_layer = 8, c.n_head = 4, c.n_embd = 32, c.n_positions = kT, c.vocab_size = 1000;
  return c;
}

// Token of (step, row, position): a fixed pseudo-random stream.
int32_t token(int step, int64_t row, int64_t t, int salt) {
  uint64_t x = (static_cast<uint64_t>(step) * 1000003u + static_cast<uint64_t>(row) * 7919u +
                static_cast<uint64_t>(t) * 104729u + static_cast<uint64_t>(salt) * 15485863u);
  x ^= x >> 13, x *= 0x9E3779B97F4A7C15ull, x ^= x >> 29;
  return static_cast<int32_t>(x % 1000);
}

struct Batch {
  std::vector<int32_t> ids, targets;  // (M * B, T)
  Batch(int step, int M) {
    for (int64_t r = 0; r < M * kB; ++r) {
      for (int64_t t = 0; t < kT; ++t) {
        ids.push_back(token(step, r, t, 0));
        targets.push_back(token(step, r, t, 1));
      }
    }
  }
  MicroBatch mb(int m) const { return {ids.data() + m * kB * kT, targets.data() + m * kB * kT}; }
};

struct MaxDiff {
  double abs = 0.0, ref = 0.0;
};
MaxDiff max_diff(const float* a, const float* ref, int64_t n) {
  MaxDiff d;
  for (int64_t i = 0; i < n; ++i) {
    d.abs = std::max(d.abs, static_cast<double>(std::fabs(a[i] - ref[i])));
    d.ref = std::max(d.ref, static_cast<double>(std::fabs(ref[i])));
  }
  return d;
}

// The whole model on one rank, gradient accumulation over the micro-batches: per step its
// loss and every gradient by name (before the step's AdamW), then the final weights.
struct Reference {
  std::vector<double> losses;
  std::vector<std::map<std::string, std::vector<float>>> grads;
  std::map<std::string, std::vector<float>> weights;
};

Reference reference(int M) {
  const nn::ModelConfig cfg = tiny();
  const float dloss = 1.0f / static_cast<float>(M * kB * kT);
  MemoryTracker tracker;
  nn::Model ref(cfg);
  ref.allocate(tracker);
  ref.params().initialize(kSeed);
  optim::AdamW opt(ref.params(), tracker, {});
  nn::ModelActivations acts = ref.make_activations(tracker, kB, kT);
  Reference out;
  const nn::ParameterSet& ps = ref.params();
  for (int step = 0; step < kSteps; ++step) {
    const Batch batch(step, M);
    ref.params().zero_grads();
    double loss = 0.0;
    for (int m = 0; m < M; ++m) loss += ref.forward_backward(acts, batch.mb(m).ids, batch.mb(m).targets, kB, kT, dloss);
    out.losses.push_back(loss);
    auto& g = out.grads.emplace_back();
    for (int id = 0; id < ps.size(); ++id) g[ps.info(id).name].assign(ps.grad(id), ps.grad(id) + ps.info(id).numel);
    opt.step(ref.params().values().data(), ref.params().grads().data(), kLr, 1.0f);
  }
  for (int id = 0; id < ps.size(); ++id) out.weights[ps.info(id).name].assign(ps.data(id), ps.data(id) + ps.info(id).numel);
  return out;
}

struct Case {
  ScheduleKind kind;
  int M;
  int V = 1;
  SendProgress progress = SendProgress::kNone;
};

// One pp rank's part of a case: its chunks, the executor over the mesh's pp group.
void run_rank(comm::Mesh& mesh, const Case& cs, const Reference& ref) {
  comm::Communicator& pp_group = mesh.pp();
  const int P = pp_group.size(), rank = pp_group.rank();
  const ScheduleSpec spec{cs.kind, P, cs.M, cs.V};
  const std::string what = spec.describe() + " on pp rank " + std::to_string(rank);
  const nn::ModelConfig cfg = tiny();
  const float dloss = 1.0f / static_cast<float>(cs.M * kB * kT);
  PartitionOptions po;
  po.pp = P, po.virtual_stages = cs.V;
  const Partition part = partition_layers(cfg.n_layer, po);
  MemoryTracker tracker;
  std::vector<std::unique_ptr<nn::Model>> chunks;
  std::vector<std::unique_ptr<optim::AdamW>> opts;
  std::vector<nn::Model*> ptrs;
  for (int c = 0; c < cs.V; ++c) {
    chunks.push_back(std::make_unique<nn::Model>(cfg, nn::TpContext{}, part.chunk(rank, c)));
    chunks.back()->allocate(tracker);
    chunks.back()->params().initialize(kSeed);
    opts.push_back(std::make_unique<optim::AdamW>(chunks.back()->params(), tracker, optim::AdamWConfig{}));
    ptrs.push_back(chunks.back().get());
  }
  ExecutorOptions eo;
  eo.micro_batch_rows = kB, eo.seq_len = kT, eo.send_progress = cs.progress;
  PipelineExecutor exec(pp_group, ptrs, spec, tracker, eo);
  for (int step = 0; step < kSteps; ++step) {
    const Batch batch(step, cs.M);
    for (auto& c : chunks) c->params().zero_grads();
    double loss = exec.run_step([&](int m) { return batch.mb(m); }, dloss);
    pp_group.broadcast(std::span<double>(&loss, 1), P - 1).wait();
    const double n_tokens = static_cast<double>(cs.M * kB * kT), ref_loss = ref.losses[static_cast<std::size_t>(step)];
    if (step == 0) {
      EXPECT_EQ(loss, ref_loss) << what << " step 0: same weights, same kernels per micro-batch";
    } else {
      EXPECT_NEAR(loss / n_tokens, ref_loss / n_tokens, 1e-5 * ref_loss / n_tokens) << what << " step " << step;
    }
    for (auto& c : chunks) {
      const nn::ParameterSet& ps = c->params();
      for (int id = 0; id < ps.size(); ++id) {
        const nn::ParamInfo& info = ps.info(id);
        const std::vector<float>& rg = ref.grads[static_cast<std::size_t>(step)].at(info.name);
        ASSERT_EQ(static_cast<int64_t>(rg.size()), info.numel) << info.name;
        const MaxDiff d = max_diff(ps.grad(id), rg.data(), info.numel);
        if (step > 0) {
          EXPECT_LE(d.abs, 1e-5 * d.ref + 1e-9) << what << " grad " << info.name << " step " << step;
        } else if (info.name == "wte.weight") {
          EXPECT_LE(d.abs, 2.0 * cs.M * kU * d.ref) << what << " grad wte.weight step 0";
        } else {
          EXPECT_EQ(d.abs, 0.0) << what << " grad " << info.name << " step 0: the same kernels on the same data";
        }
      }
    }
    for (std::size_t c = 0; c < chunks.size(); ++c) {
      opts[c]->step(chunks[c]->params().values().data(), chunks[c]->params().grads().data(), kLr, 1.0f);
    }
  }
  for (auto& c : chunks) {
    const nn::ParameterSet& ps = c->params();
    for (int id = 0; id < ps.size(); ++id) {
      const std::vector<float>& rw = ref.weights.at(ps.info(id).name);
      EXPECT_LE(max_diff(ps.data(id), rw.data(), ps.info(id).numel).abs, 1e-5) << what << " weights " << ps.info(id).name;
    }
  }
  // Activation memory follows the schedule: GPipe holds every micro-batch, 1F1B min(P - rank, M).
  if (cs.kind != ScheduleKind::kInterleaved) {
    EXPECT_EQ(exec.pool_size(0), cs.kind == ScheduleKind::kOneFOneB ? std::min(P - rank, cs.M) : cs.M) << what;
  }
}

class InProcessPipeline : public testing::TestWithParam<int> {};

TEST_P(InProcessPipeline, EveryScheduleMatchesOneRank) {
  kernels::set_num_threads(1);  // the ranks are the parallelism
  const int P = GetParam();
  std::vector<Case> cases;
  for (int M : {1, 4}) {
    cases.push_back({ScheduleKind::kGPipe, M});
    cases.push_back({ScheduleKind::kOneFOneB, M});
  }
  cases.push_back({ScheduleKind::kInterleaved, P, 2});
  cases.push_back({ScheduleKind::kInterleaved, 2 * P, 2, SendProgress::kThread});
  cases.push_back({ScheduleKind::kOneFOneB, 4, 1, SendProgress::kAuto});  // the probe, over threads
  std::map<int, Reference> refs;
  for (const Case& cs : cases) {
    if (!refs.count(cs.M)) refs.emplace(cs.M, reference(cs.M));
  }
  comm::run_in_process(P, [&](comm::Communicator& launcher) {
    // OpenMP's thread count is per thread: each rank's thread starts at OMP_NUM_THREADS, not
    // at the 1 set above, and the reference ran with 1 thread.
    kernels::set_num_threads(1);
    comm::Mesh mesh(launcher.split(0, launcher.rank(), "world"), comm::MeshShape{P, 1, 1});
    for (const Case& cs : cases) run_rank(mesh, cs, refs.at(cs.M));
  }, test_options());
}

INSTANTIATE_TEST_SUITE_P(Stages, InProcessPipeline, testing::Values(2, 4));

TEST(InProcessPipeline, DeadStageIsNamedNotHung) {
  // pp rank 1 "dies" for 2.5 s, longer than the 1 s timeout, so rank 0's wait for the
  // gradient fails naming pp rank 1; rank 1 then runs its step so every message drains.
  kernels::set_num_threads(1);
  comm::CommOptions o = test_options();
  o.timeout_s = 1.0;
  std::string msg;
  comm::run_in_process(2, [&](comm::Communicator& launcher) {
    comm::Mesh mesh(launcher.split(0, launcher.rank(), "world"), comm::MeshShape{2, 1, 1});
    comm::Communicator& pp = mesh.pp();
    const nn::ModelConfig cfg = tiny();
    const Partition part = partition_layers(cfg.n_layer, {2, 1});
    MemoryTracker tracker;
    nn::Model model(cfg, {}, part.chunk(pp.rank(), 0));
    model.allocate(tracker);
    model.params().initialize(kSeed);
    ExecutorOptions eo;
    eo.micro_batch_rows = kB, eo.seq_len = kT, eo.reduce_tied_grads = false, eo.send_progress = SendProgress::kNone;
    PipelineExecutor exec(pp, {&model}, {ScheduleKind::kOneFOneB, 2, 1, 1}, tracker, eo);
    const Batch batch(0, 1);
    if (pp.rank() == 1) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2500));
      pp.set_timeout(30.0);
      exec.run_step([&](int m) { return batch.mb(m); }, 1.0f);
    } else {
      try {
        exec.run_step([&](int m) { return batch.mb(m); }, 1.0f);
      } catch (const Error& e) {
        msg = e.what();
      }
    }
    mesh.world().set_timeout(30.0);
    mesh.world().barrier().wait();  // rank 1's step (and its gradient to rank 0) completes first
  }, o);
  EXPECT_NE(msg.find("pp rank 0 waiting for the gradient of micro-batch 0 (local chunk 0) with pp rank 1 failed"),
            std::string::npos) << msg;
  EXPECT_NE(msg.find("did not complete within"), std::string::npos) << msg;
}

}  // namespace
}  // namespace trident::pp
