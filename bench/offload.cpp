// build/bench/offload: what --offload optimizer (optim/moment_store.h) costs in step time,
// single process, and what the disk under --dir allows.
// Usage: build/bench/offload [--model small] [--rows 4] [--seq 256] [--steps 5] [--threads 2]
//                            [--dir /tmp] [--block-kib 4096]
// Two models from the same seed, one with its AdamW moments in memory and one with them
// offloaded to a file under --dir; the steps (forward + backward + AdamW) alternate between
// the two round by round, so drift on a shared machine hits both alike, and the offloaded
// median is printed as a ratio against the in-memory one, for the whole step and for the
// optimizer update alone. The disk: the planner's probe (plan/calibrate_disk.h), a sequential
// O_DIRECT write and read of a file as large as the moments in the store's requests (both
// moments of a block), two in flight (the page cache is out of the way wherever the file
// system takes O_DIRECT; said when it does not). Hidden I/O: the share of the update's disk
// time (bytes moved / measured bandwidth) it did not spend waiting; and the measured update
// against the planner's model of it, max(disk time, in-memory update).
// The weights of the two models are compared bitwise at the end (exit 1 if they differ).
#include <fmt/format.h>

#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "core/async_file_io.h"
#include "core/memory.h"
#include "core/timer.h"
#include "kernels/kernels.h"
#include "nn/model.h"
#include "optim/adamw.h"
#include "optim/moment_store.h"
#include "plan/calibrate_disk.h"
#include "plan/cost_model.h"

#include "model_step_bench.h"

using namespace trident;

namespace {

struct Run {
  MemoryTracker tracker;
  std::unique_ptr<nn::Model> model;
  std::unique_ptr<optim::AdamW> adamw;
  nn::ModelActivations acts;
  std::vector<double> step_s, update_s;
};

}  // namespace

int main(int argc, char** argv) {
  try {
    // --dir and --block-kib are ours; the rest is the shared model-step parser's.
    std::string dir = "/tmp";
    int64_t block_kib = 4096;
    std::vector<char*> rest{argv[0]};
    for (int i = 1; i < argc; ++i) {
      const std::string k = argv[i];
      if ((k == "--dir" || k == "--block-kib") && i + 1 < argc) {
        (k == "--dir" ? (void)(dir = argv[++i]) : (void)(block_kib = std::atoll(argv[++i])));
      } else {
        rest.push_back(argv[i]);
      }
    }
    const bench::ModelStepArgs a = bench::parse_model_step_args(static_cast<int>(rest.size()), rest.data());
    kernels::set_num_threads(a.threads);
    const nn::ModelConfig cfg = nn::model_preset(a.model);
    const int64_t B = a.rows, T = a.seq, N = B * T;
    const bench::SyntheticBatch batch = bench::synthetic_batch(cfg, N);
    const optim::AdamWConfig adam;
    Run mem, off;
    for (Run* r : {&mem, &off}) {
      r->model = std::make_unique<nn::Model>(cfg);
      r->model->allocate(r->tracker);
      r->model->params().initialize(1337);
      r->acts = r->model->make_activations(r->tracker, B, T);
    }
    const int64_t P = mem.model->params().total_numel();
    mem.adamw = std::make_unique<optim::AdamW>(mem.model->params(), mem.tracker, adam);
    off.adamw = std::make_unique<optim::AdamW>(
        off.model->params(), off.tracker, adam, 0, -1,
        optim::make_offloaded_moment_store(off.tracker, P, dir + "/trident-bench-offload.moments", block_kib * 1024));
    auto step = [&](Run& r) {
      r.model->params().zero_grads();
      Stopwatch sw;
      r.model->forward_backward(r.acts, batch.ids.data(), batch.targets.data(), B, T, 1.0f / static_cast<float>(N));
      Stopwatch su;
      nn::ParameterSet& ps = r.model->params();
      r.adamw->step(ps.values().data(), ps.grads().data(), 6e-4f, 1.0f);
      r.update_s.push_back(su.seconds());
      r.step_s.push_back(sw.seconds());
    };
    fmt::print("offload bench: {} ({} parameters), batch {} x {} tokens, {} threads, median of {} steps "
               "(after one warm-up), in memory and offloaded alternating\nmoments {}\n",
               a.model, P, B, T, a.threads, a.steps, off.adamw->moments().describe());
    for (Run* r : {&mem, &off}) step(*r);  // warm-up: first touch, the file's first pass
    const optim::MomentStore::IoStats io0 = off.adamw->moments().io_stats();
    for (Run* r : {&mem, &off}) r->step_s.clear(), r->update_s.clear();
    for (int s = 0; s < a.steps; ++s) {
      for (Run* r : {&mem, &off}) step(*r);
    }
    const optim::MomentStore::IoStats io1 = off.adamw->moments().io_stats();
    const double t0 = bench::median(mem.step_s), t1 = bench::median(off.step_s);
    const double u0 = bench::median(mem.update_s), u1 = bench::median(off.update_s);
    fmt::print("{:>10} {:>10} {:>8} {:>11} {:>8} {:>16} {:>12}\n", "moments", "step ms", "ratio", "update ms",
               "ratio", "resident total", "offloaded");
    for (const Run* r : {&mem, &off}) {
      const double t = bench::median(r->step_s), u = bench::median(r->update_s);
      fmt::print("{:>10} {:>10.1f} {:>7.3f}x {:>11.1f} {:>7.3f}x {:>16} {:>12}\n", r == &mem ? "in memory" : "offloaded",
                 1e3 * t, t / t0, 1e3 * u, u / u0, format_bytes(static_cast<double>(r->tracker.peak_total())),
                 format_bytes(static_cast<double>(r->tracker.peak(MemCategory::kOffloaded))));
    }
    // The planner's probe (plan/calibrate_disk.h), here as large as the moments.
    const plan::DiskCalibration disk = plan::calibrate_disk(dir, static_cast<std::size_t>(2 * block_kib * 1024),
                                                            static_cast<std::size_t>(8 * P));
    const bool direct = disk.direct;
    const double write_mbs = disk.model.write_bandwidth / 1e6, read_mbs = disk.model.read_bandwidth / 1e6;
    const double steps = a.steps;
    const double rd = (io1.bytes_read - io0.bytes_read) / steps, wr = (io1.bytes_written - io0.bytes_written) / steps;
    const double disk_s = rd / (read_mbs * 1e6) + wr / (write_mbs * 1e6);
    const double waited = (io1.wait_s - io0.wait_s) / steps;
    fmt::print("disk under {} ({}): sequential write {:.0f} MB/s, read {:.0f} MB/s\n", dir,
               direct ? "O_DIRECT" : "buffered: the file system refuses O_DIRECT, the page cache is in the way",
               write_mbs, read_mbs);
    fmt::print("per offloaded step: read {}, wrote {}; at those rates {:.1f} ms of disk time, {:.1f} ms "
               "spent waiting for it: {:.0f}% hidden behind the update; floor of the update = disk time "
               "{:.1f} ms vs in-memory update {:.1f} ms\n",
               format_bytes(rd), format_bytes(wr), 1e3 * disk_s, 1e3 * waited,
               100.0 * std::max(0.0, 1.0 - waited / disk_s), 1e3 * disk_s, 1e3 * u0);
    // The planner's model of the offloaded update (plan/cost_model.h): the I/O fully behind the
    // compute, max(disk time, in-memory update); measured against it as a ratio.
    const double predicted = plan::offloaded_update_seconds(disk_s, u0);
    fmt::print("planner's model of the offloaded update: max(disk {:.1f} ms, in-memory update {:.1f} ms) = "
               "{:.1f} ms; measured {:.1f} ms = {:.3f}x the model\n",
               1e3 * disk_s, 1e3 * u0, 1e3 * predicted, 1e3 * u1, u1 / predicted);
    const bool same = std::memcmp(mem.model->params().values().data(), off.model->params().values().data(),
                                  static_cast<std::size_t>(P) * sizeof(float)) == 0;
    fmt::print("weights after {} steps: {}\n", a.steps + 1, same ? "bitwise equal" : "DIFFER");
    (void)t1;
    return same ? 0 : 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "offload bench: {}\n", e.what());
    return 2;
  }
}
