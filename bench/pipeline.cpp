// build/bench/pipeline: measured pipeline bubble vs theory and vs the simulator.
// Usage: scripts/trident-mpirun -n 2|4 build/bench/pipeline [--steps N] [--layers L]
//        [--embd C] [--seq T] [--rows B] [--timeline] [--send-progress auto|thread|none]
// pp = world size. A tiny-vocabulary GPT split evenly (equal stage costs up to the small
// embedding and head). For each schedule and micro-batch count: the mean over ranks of the
// measured idle fraction of a step (1 - compute time / step time) next to theory
// ((p-1)/(m+p-1) for GPipe and 1F1B, (p-1)/(Vm+p-1) interleaved), and the simulator's step
// time from the measured per-chunk forward/backward costs next to the measured step time.
// With more ranks than cores the ranks share CPUs and the idle fraction is not meaningful.
// --send-progress (default auto) is the executor's ExecutorOptions::send_progress; the
// header line says whether the ranks poll their sends from a progress thread.
#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <thread>

#include "comm/communicator.h"
#include "comm/mpi_backend.h"
#include "comm/runtime.h"
#include "kernels/kernels.h"
#include "nn/model.h"
#include "parallel/pipeline/executor.h"
#include "parallel/pipeline/partition.h"
#include "parallel/pipeline/simulator.h"

using namespace trident;

namespace {

struct Args {
  int steps = 3, layers = 8, embd = 128, seq = 64, rows = 4;
  bool timeline = false;
  pp::SendProgress send_progress = pp::SendProgress::kAuto;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto next = [&]() -> int {
      if (i + 1 >= argc) comm::abort_job(fmt::format("{} needs a value", k));
      return std::atoi(argv[++i]);
    };
    if (k == "--steps") a.steps = next();
    else if (k == "--layers") a.layers = next();
    else if (k == "--embd") a.embd = next();
    else if (k == "--seq") a.seq = next();
    else if (k == "--rows") a.rows = next();
    else if (k == "--timeline") a.timeline = true;
    else if (k == "--send-progress") {
      const std::string v = i + 1 < argc ? argv[++i] : "";
      if (v == "auto") a.send_progress = pp::SendProgress::kAuto;
      else if (v == "thread") a.send_progress = pp::SendProgress::kThread;
      else if (v == "none") a.send_progress = pp::SendProgress::kNone;
      else comm::abort_job(fmt::format("--send-progress takes auto, thread or none, not '{}'", v));
    }
    else comm::abort_job(fmt::format("unknown argument {}", k));
  }
  return a;
}

struct Row {
  std::string name;
  int M;
  double measured_s, simulated_s, idle, theory, sim_idle;
};

}  // namespace

int main(int argc, char** argv) {
  try {
    comm::MpiRuntime mpi(&argc, &argv);
    const Args args = parse(argc, argv);
    const auto pp_owner = comm::make_mpi_communicator(MPI_COMM_WORLD, "pp");
    comm::Communicator& pp = *pp_owner;
    const int P = pp.size(), rank = pp.rank();
    kernels::set_num_threads(1);
    nn::ModelConfig cfg;
    cfg.n_layer = args.layers, cfg.n_embd = args.embd, cfg.n_head = 4;
    cfg.n_positions = args.seq, cfg.vocab_size = 64, cfg.vocab_pad_multiple = 64;
    if (rank == 0) {
      fmt::print("# pipeline bench: pp {} ({} hardware threads), {}, micro-batch {}x{}, {} "
                 "steps each (median)\n",
                 P, std::thread::hardware_concurrency(), cfg.describe(), args.rows, args.seq,
                 args.steps);
      fmt::print("{:<14} {:>3} {:>11} {:>11} {:>7} {:>9} {:>9} {:>9} {:>7}\n", "schedule", "M",
                 "step ms", "sim ms", "sim/meas", "idle %", "theory %", "sim idle%", "diff pp");
    }
    std::vector<Row> rows;
    bool said_progress = false;
    struct Config { pp::ScheduleKind kind; int V; };
    for (Config c : {Config{pp::ScheduleKind::kGPipe, 1}, Config{pp::ScheduleKind::kOneFOneB, 1},
                     Config{pp::ScheduleKind::kInterleaved, 2}}) {
      if (c.V > 1 && cfg.n_layer % (P * c.V) != 0) continue;
      const pp::Partition part = pp::partition_layers(cfg.n_layer, {P, c.V});
      MemoryTracker tracker;
      std::vector<std::unique_ptr<nn::Model>> chunks;
      std::vector<nn::Model*> ptrs;
      for (int v = 0; v < c.V; ++v) {
        chunks.push_back(std::make_unique<nn::Model>(cfg, nn::TpContext{}, part.chunk(rank, v)));
        chunks.back()->allocate(tracker);
        chunks.back()->params().initialize(1);
        ptrs.push_back(chunks.back().get());
      }
      for (int M : {P, 2 * P, 4 * P}) {
        const pp::ScheduleSpec spec{c.kind, P, M, c.V};
        pp::ExecutorOptions eo;
        eo.micro_batch_rows = args.rows, eo.seq_len = args.seq;
        eo.send_progress = args.send_progress;
        pp::PipelineExecutor exec(pp, ptrs, spec, tracker, eo);
        if (!said_progress) {
          int32_t polling = exec.has_progress_thread() ? 1 : 0;
          pp.allreduce(std::span<int32_t>(&polling, 1)).wait();
          if (rank == 0) {
            fmt::print("# send progress: {} of {} ranks poll their sends from a progress thread\n",
                       polling, P);
          }
          said_progress = true;
        }
        std::vector<int32_t> tokens(static_cast<std::size_t>(M * args.rows * args.seq));
        for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>((i * 7) % 64);
        auto provider = [&](int mb) {
          const int32_t* p = tokens.data() + static_cast<std::ptrdiff_t>(mb) * args.rows * args.seq;
          return pp::MicroBatch{p, p};
        };
        const float dloss = 1.0f / static_cast<float>(tokens.size());
        std::vector<std::pair<double, pp::Timeline>> runs;
        for (int s = 0; s < args.steps + 1; ++s) {
          for (auto& ch : chunks) ch->params().zero_grads();
          pp.barrier().wait();
          exec.run_step(provider, dloss);
          pp::Timeline tl = exec.gather_timeline();
          if (s > 0) runs.emplace_back(tl.step_time, std::move(tl));  // step 0 warms up
        }
        std::sort(runs.begin(), runs.end(), [](auto& a, auto& b) { return a.first < b.first; });
        const pp::Timeline& tl = runs[runs.size() / 2].second;
        // Simulator with the measured mean costs per (rank, chunk).
        pp::CostModel cost;
        cost.forward_by_chunk.assign(static_cast<std::size_t>(P), std::vector<double>(static_cast<std::size_t>(c.V), 0.0));
        cost.backward_by_chunk = cost.forward_by_chunk;
        for (int r = 0; r < P; ++r) {
          for (const pp::TimelineEvent& e : tl.ranks[static_cast<std::size_t>(r)]) {
            auto& slot = (e.op == pp::Op::kForward ? cost.forward_by_chunk : cost.backward_by_chunk)
                [static_cast<std::size_t>(r)][static_cast<std::size_t>(e.chunk)];
            slot += (e.end - e.start) / M;
          }
        }
        const pp::SimResult sim = pp::simulate(spec, cost);
        double sim_idle = 0.0;
        for (double b : sim.bubble) sim_idle += b / P;
        const double theory = static_cast<double>(P - 1) / (c.V * M + P - 1);
        Row row{spec.describe().substr(0, spec.describe().find(' ')) + (c.V > 1 ? fmt::format(" V={}", c.V) : ""),
                M, tl.step_time, sim.step_time, tl.mean_idle_fraction(), theory, sim_idle};
        if (rank == 0) {
          fmt::print("{:<14} {:>3} {:>11.2f} {:>11.2f} {:>7.3f} {:>9.1f} {:>9.1f} {:>9.1f} {:>+7.1f}\n",
                     row.name, M, 1e3 * row.measured_s, 1e3 * row.simulated_s,
                     row.simulated_s / row.measured_s, 100 * row.idle, 100 * row.theory,
                     100 * row.sim_idle, 100 * (row.idle - row.theory));
          if (args.timeline) {
            fmt::print("measured:\n{}simulated:\n{}", tl.ascii(96), sim.timeline.ascii(96));
          }
        }
      }
    }
    if (rank == 0) {
      fmt::print("idle % = mean over ranks of 1 - compute/step (measured); theory % = "
                 "(p-1)/(V*m+p-1); diff pp = idle - theory in percentage points\n");
    }
    pp.barrier().wait();
  } catch (const std::exception& e) {
    comm::abort_job(e.what(), 1);
  }
  return 0;
}
