// What a checkpoint costs the training loop, sync vs --async-ckpt, in one run (baseline measured
// alongside): the same steps three times from the same initial weights,
//   1. no checkpoints (the baseline),
//   2. a synchronous checkpoint every K steps (save_checkpoint: the loop waits for the write),
//   3. an asynchronous one every K steps (AsyncCheckpointer: the loop waits only for the
//      snapshot; rank 0 writes on a background thread; the run ends by waiting for the last one).
// Each iteration is timed from the start of its step to the end of its checkpoint work, so a
// checkpoint's cost lands in the iteration that took it, and a background write's competition
// for the cores lands in the iterations that follow. Prints the median iteration, the median of
// the checkpoint iterations, the mean over the run, and ratios against the baseline.
// Run: scripts/trident-mpirun -n 1 build/bench/async_ckpt [--preset small] [--batch 4]
//      [--seq 64] [--steps 24] [--every 4] [--dir /tmp]
#include <fmt/format.h>
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "comm/mesh.h"
#include "comm/mpi_backend.h"
#include "comm/runtime.h"
#include "core/rng.h"
#include "core/timer.h"
#include "nn/model_config.h"
#include "parallel/engine.h"
#include "train/async_checkpoint.h"
#include "train/checkpointing.h"

using namespace trident;

namespace {

struct Args {
  std::string preset = "small", dir = "/tmp";
  int64_t batch = 4, seq = 64;
  int steps = 24, every = 4;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--preset") a.preset = v;
    else if (k == "--batch") a.batch = std::stoll(v);
    else if (k == "--seq") a.seq = std::stoll(v);
    else if (k == "--steps") a.steps = std::stoi(v);
    else if (k == "--every") a.every = std::stoi(v);
    else if (k == "--dir") a.dir = v;
    else throw std::runtime_error("unknown option " + k);
  }
  if (a.every < 1 || a.steps < 2 * a.every) throw std::runtime_error("need --every >= 1 and --steps >= 2 * --every");
  return a;
}

parallel::BatchFn batch_for(int step, int vocab, int64_t T) {
  return [=](int64_t row0, int64_t rows, int32_t* ids, int32_t* targets) {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t t = 0; t < T; ++t) {
        const auto i = static_cast<uint32_t>((row0 + r) * T + t);
        const auto x = philox4x32({i, static_cast<uint32_t>(step), 0, 0}, {0x5eed, 0xda7a});
        const uint64_t h = (static_cast<uint64_t>(x[1]) << 32) | x[0];
        ids[r * T + t] = static_cast<int32_t>(h % static_cast<uint64_t>(vocab));
        targets[r * T + t] = static_cast<int32_t>((h >> 32) % static_cast<uint64_t>(vocab));
      }
    }
  };
}

enum class Mode { kNone, kSync, kAsync };

struct Result {
  std::vector<double> iter_s;  // per iteration (max over ranks)
  std::vector<bool> ckpt_iter;
  double total_s = 0.0;        // all iterations plus the wait for the last background write
  double snapshot_s = 0.0;     // async: mean time in the snapshot
  size_t snapshot_bytes = 0;   // async: rank 0's snapshot memory (tracker peak)
};

double max_over(double x) {
  double y = x;
  MPI_Allreduce(&x, &y, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return y;
}

Result run(comm::Mesh& mesh, const Args& a, Mode mode, const std::string& root) {
  MemoryTracker tracker;
  const nn::ModelConfig cfg = nn::model_preset(a.preset);
  parallel::Engine e(mesh, cfg, parallel::EngineOptions{}, tracker, a.batch, a.seq, 1);
  e.initialize(1);
  std::optional<train::AsyncCheckpointer> async;
  if (mode == Mode::kAsync) async.emplace(e, root);
  const nlohmann::json state = {{"bench", "async_ckpt"}};
  Result r;
  int snapshots = 0;
  // Step 0 warms up (allocations, first touch) and is not measured.
  e.train_step(batch_for(0, cfg.vocab_size, a.seq), 1e-4f);
  Stopwatch total;
  for (int s = 1; s <= a.steps; ++s) {
    mesh.world().barrier().wait();
    Stopwatch sw;
    e.train_step(batch_for(s, cfg.vocab_size, a.seq), 1e-4f);
    const bool ckpt = mode != Mode::kNone && s % a.every == 0;
    if (async) async->poll();
    if (ckpt && mode == Mode::kSync) train::save_checkpoint(e, root, s, state);
    if (ckpt && async) {
      async->start(s, state);
      r.snapshot_s += async->last_snapshot_seconds();
      ++snapshots;
    }
    r.iter_s.push_back(max_over(sw.seconds()));
    r.ckpt_iter.push_back(ckpt);
  }
  if (async) async->finish();
  r.total_s = max_over(total.seconds());
  if (snapshots) r.snapshot_s /= snapshots;
  r.snapshot_bytes = tracker.peak(MemCategory::kCheckpointSnapshot);
  return r;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::vector<double> pick(const Result& r, bool ckpt) {
  std::vector<double> out;
  for (size_t i = 0; i < r.iter_s.size(); ++i) {
    if (r.ckpt_iter[i] == ckpt) out.push_back(r.iter_s[i]);
  }
  return out;
}

std::string loadavg() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return a + " " + b + " " + c;
}

}  // namespace

int main(int argc, char** argv) {
  comm::MpiRuntime mpi(&argc, &argv);
  try {
    const Args a = parse(argc, argv);
    const int n = mpi.world_size(), rank = mpi.world_rank();
    comm::Mesh mesh(comm::make_mpi_communicator(MPI_COMM_WORLD, "world"), comm::MeshShape{1, n, 1});
    std::string root = fmt::format("{}/trident-bench-async-ckpt-{}", a.dir, getpid());
    int len = static_cast<int>(root.size());
    MPI_Bcast(&len, 1, MPI_INT, 0, MPI_COMM_WORLD);
    root.resize(static_cast<size_t>(len));
    MPI_Bcast(root.data(), len, MPI_CHAR, 0, MPI_COMM_WORLD);
    const std::string load_before = loadavg();
    const Result none = run(mesh, a, Mode::kNone, root + "/none");
    const Result sync = run(mesh, a, Mode::kSync, root + "/sync");
    const Result async = run(mesh, a, Mode::kAsync, root + "/async");
    if (rank == 0) {
      const auto ckpt_bytes = std::filesystem::file_size(root + "/sync/" + ckpt::step_dir_name(a.every) + "/model.safetensors") +
                              std::filesystem::file_size(root + "/sync/" + ckpt::step_dir_name(a.every) + "/optimizer.safetensors");
      fmt::print("async_ckpt: preset {}, batch {} x {}, {} rank(s) (dp), {} measured steps, a checkpoint every {} "
                 "({}) under {}\n",
                 a.preset, a.batch, a.seq, n, a.steps, a.every, format_bytes(static_cast<double>(ckpt_bytes)), a.dir);
      fmt::print("load average before: {}   after: {}   (machine: {} cores)\n", load_before, loadavg(),
                 std::thread::hardware_concurrency());
      const double base_med = median(none.iter_s);
      const double base_mean = none.total_s / a.steps;
      fmt::print("{:<22} {:>12} {:>18} {:>16} {:>14} {:>10}\n", "mode", "median iter", "median ckpt iter",
                 "median other", "mean iter", "vs none");
      auto row = [&](const char* name, const Result& r) {
        const double mean = r.total_s / a.steps;
        fmt::print("{:<22} {:>10.1f}ms {:>16.1f}ms {:>14.1f}ms {:>12.1f}ms {:>9.3f}x\n", name,
                   median(r.iter_s) * 1e3, median(pick(r, true)) * 1e3, median(pick(r, false)) * 1e3,
                   mean * 1e3, mean / base_mean);
      };
      row("no checkpoint", none);
      row("sync checkpoint", sync);
      row("async checkpoint", async);
      const double sync_extra = sync.total_s - none.total_s, async_extra = async.total_s - none.total_s;
      fmt::print("checkpoint iterations: sync {:.2f}x, async {:.2f}x the no-checkpoint median iteration ({:.1f} ms); "
                 "async snapshot {:.1f} ms\n",
                 median(pick(sync, true)) / base_med, median(pick(async, true)) / base_med, base_med * 1e3,
                 async.snapshot_s * 1e3);
      fmt::print("run time added by checkpointing: sync {:.2f} s, async {:.2f} s (async/sync {:.2f}); "
                 "async snapshot memory on rank 0: {}\n",
                 sync_extra, async_extra, sync_extra > 0 ? async_extra / sync_extra : 0.0,
                 format_bytes(static_cast<double>(async.snapshot_bytes)));
      std::filesystem::remove_all(root);
    }
  } catch (const std::exception& e) {
    comm::abort_job(e.what(), 1);
  }
  return 0;
}
