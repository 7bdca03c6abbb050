// Data-parallel scaling and communication overlap, in one run (baseline measured alongside):
//   1. single process (world rank 0 alone, a 1x1x1 mesh over MPI_COMM_SELF) on the global batch
//   2. dp over every rank on the same global batch, overlap on (buckets reduced during backward)
//   3. the same with overlap off (every bucket launched after backward)
//   4. the same as 2 with --grad-reduce-dtype bf16: step time and bytes sent per rank per step
//      (Communicator::bytes_sent) as ratios bf16 / fp32
// Prints tokens/s, scaling efficiency = dp tokens/s / (ranks * single tokens/s), and the exposed
// communication: time blocked waiting for dp communication / step time (max over ranks).
// Run: scripts/trident-mpirun -n 2 build/bench/data_parallel [--preset small] [--batch 4]
//      [--seq 128] [--steps 3] [--bucket-mb 25] [--zero 0]
// One thread per rank (trident-mpirun sets OMP_NUM_THREADS=1): compare like with like.
#include <fmt/format.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "comm/communicator.h"
#include "comm/mesh.h"
#include "comm/mpi_backend.h"
#include "comm/runtime.h"
#include "core/rng.h"
#include "core/timer.h"
#include "nn/model_config.h"
#include "parallel/engine.h"

using namespace trident;

namespace {

struct Args {
  std::string preset = "small";
  int64_t batch = 4, seq = 128;
  int steps = 3, zero = 0;
  double bucket_mb = 25.0;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--preset") a.preset = v;
    else if (k == "--batch") a.batch = std::stoll(v);
    else if (k == "--seq") a.seq = std::stoll(v);
    else if (k == "--steps") a.steps = std::stoi(v);
    else if (k == "--bucket-mb") a.bucket_mb = std::stod(v);
    else if (k == "--zero") a.zero = std::stoi(v);
    else throw std::runtime_error("unknown option " + k);
  }
  return a;
}

std::string loadavg() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return a + " " + b + " " + c;
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

struct Timing {
  double step_s = 0.0, wait_s = 0.0;  // mean per measured step
  double bytes = 0.0;                 // dp bytes sent by this rank per measured step
};

Timing run(comm::Mesh& mesh, const Args& a, bool overlap,
           parallel::GradReduceDType dtype = parallel::GradReduceDType::kFp32) {
  parallel::EngineOptions o;
  o.grad_reduce_dtype = dtype;
  o.zero = a.zero;
  o.bucket_mb = a.bucket_mb;
  o.overlap = overlap;
  MemoryTracker tracker;
  const nn::ModelConfig cfg = nn::model_preset(a.preset);
  parallel::Engine e(mesh, cfg, o, tracker, a.batch, a.seq, 1);
  e.initialize(1);
  Timing t;
  for (int s = 0; s <= a.steps; ++s) {  // step 0 warms up
    mesh.world().barrier().wait();
    const uint64_t sent = mesh.dp().bytes_sent();
    Stopwatch sw;
    const parallel::StepStats st = e.train_step(batch_for(s, cfg.vocab_size, a.seq), 1e-4f);
    const double took = sw.seconds();
    if (s > 0) {
      t.step_s += took / a.steps;
      t.wait_s += st.comm_wait_s / a.steps;
      t.bytes += static_cast<double>(mesh.dp().bytes_sent() - sent) / a.steps;
    }
  }
  return t;
}

// Idle without burning a core while another rank works alone.
void idle_barrier(MPI_Comm comm) {
  MPI_Request req;
  MPI_Ibarrier(comm, &req);
  int done = 0;
  while (!done) {
    MPI_Test(&req, &done, MPI_STATUS_IGNORE);
    if (!done) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

double max_over(double x) {
  double y = x;
  MPI_Allreduce(&x, &y, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return y;
}

}  // namespace

int main(int argc, char** argv) {
  comm::MpiRuntime mpi(&argc, &argv);
  try {
    const Args a = parse(argc, argv);
    const int n = mpi.world_size(), rank = mpi.world_rank();
    const nn::ModelConfig cfg = nn::model_preset(a.preset);
    const double tokens = static_cast<double>(a.batch * a.seq);
    const std::string load_before = loadavg();

    // 1. Single process on world rank 0; the others sleep.
    Timing single;
    if (rank == 0) {
      comm::Mesh self(comm::make_mpi_communicator(MPI_COMM_SELF, "world"), comm::MeshShape{1, 1, 1});
      single = run(self, a, true);
      idle_barrier(MPI_COMM_WORLD);
    } else {
      idle_barrier(MPI_COMM_WORLD);
    }
    MPI_Bcast(&single.step_s, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);

    // 2-3. dp over all ranks, overlap on / off.
    comm::Mesh mesh(comm::make_mpi_communicator(MPI_COMM_WORLD, "world"), comm::MeshShape{1, n, 1});
    const Timing on = run(mesh, a, true);
    const Timing off = run(mesh, a, false);
    const Timing bf16 = run(mesh, a, true, parallel::GradReduceDType::kBf16);
    const double bf16_step = max_over(bf16.step_s), bf16_wait = max_over(bf16.wait_s);
    const double on_step = max_over(on.step_s), on_wait = max_over(on.wait_s);
    const double off_step = max_over(off.step_s), off_wait = max_over(off.wait_s);

    if (rank == 0) {
      int64_t params = 0;
      {
        nn::Model m(cfg);
        MemoryTracker t;
        m.allocate(t);
        params = m.params().total_numel();
      }
      const double single_tps = tokens / single.step_s;
      const double on_tps = tokens / on_step, off_tps = tokens / off_step;
      fmt::print("data_parallel: preset {} ({:.1f} M parameters, gradient {:.1f} MiB), global batch {} x {} "
                 "= {:.0f} tokens, zero {}, bucket {} MiB, {} measured steps, 1 thread per rank\n",
                 a.preset, params / 1e6, params * 4.0 / (1 << 20), a.batch, a.seq, tokens, a.zero,
                 a.bucket_mb, a.steps);
      fmt::print("load average before: {}   after: {}   (machine: {} cores)\n", load_before, loadavg(),
                 std::thread::hardware_concurrency());
      fmt::print("{:<26} {:>10} {:>12} {:>11} {:>16}\n", "run", "step s", "tokens/s", "scaling",
                 "exposed comm");
      fmt::print("{:<26} {:>10.3f} {:>12.1f} {:>11} {:>16}\n", "single process", single.step_s,
                 single_tps, "1.00x", "-");
      fmt::print("{:<26} {:>10.3f} {:>12.1f} {:>10.2f}x {:>9.3f} s {:>4.1f}%\n",
                 fmt::format("dp {} overlap on", n), on_step, on_tps, on_tps / single_tps, on_wait,
                 100.0 * on_wait / on_step);
      fmt::print("{:<26} {:>10.3f} {:>12.1f} {:>10.2f}x {:>9.3f} s {:>4.1f}%\n",
                 fmt::format("dp {} overlap off", n), off_step, off_tps, off_tps / single_tps, off_wait,
                 100.0 * off_wait / off_step);
      fmt::print("{:<26} {:>10.3f} {:>12.1f} {:>10.2f}x {:>9.3f} s {:>4.1f}%\n",
                 fmt::format("dp {} on, bf16 sums", n), bf16_step, tokens / bf16_step,
                 tokens / bf16_step / single_tps, bf16_wait, 100.0 * bf16_wait / bf16_step);
      fmt::print("bf16 / fp32 gradient sums (overlap on, same invocation): step time {:.3f}x, "
                 "dp bytes sent per rank per step {:.0f} / {:.0f} = {:.3f}x\n",
                 bf16_step / on_step, bf16.bytes, on.bytes, bf16.bytes / on.bytes);
      fmt::print("scaling efficiency (dp tokens/s / ({} x single)): overlap on {:.1f}%, off {:.1f}%\n", n,
                 100.0 * on_tps / (n * single_tps), 100.0 * off_tps / (n * single_tps));
      fmt::print("exposed communication (time blocked in dp waits / step): overlap on {:.1f}% "
                 "(target < 10%), off {:.1f}%\n",
                 100.0 * on_wait / on_step, 100.0 * off_wait / off_step);
    }
  } catch (const std::exception& e) {
    comm::abort_job(e.what(), 1);
  }
  return 0;
}
