// build/bench/offload: what --offload optimizer and --offload optimizer+params
// (optim/moment_store.h) cost in step time, single process, and what the disk under --dir allows.
// Usage: build/bench/offload [--model small[,gpt2...]] [--rows 4] [--seq 256] [--steps 5]
//                            [--threads 2] [--dir /tmp] [--block-kib 4096] [--params]
// Models from the same seed, one with its AdamW moments in memory and one with them offloaded
// to a file under --dir (with --params: all of them under ZeRO-3 over a one-rank group, and a
// third with the parameter shard offloaded too, read ahead of each layer's gather); the steps
// (forward + backward + AdamW) alternate between them round by round, so drift on a shared
// machine hits all alike, and each offloaded median is printed as a ratio against the
// in-memory one, for the whole step and for the optimizer update alone, with the resident
// peak of a step (after the warm-up; peaks reset) and its ratio. The disk: the planner's probe
// (plan/calibrate_disk.h), a sequential O_DIRECT write and read of a file as large as the
// moments in the store's requests (both moments of a block), two in flight (the page cache
// is out of the way wherever the file system takes O_DIRECT; said when it does not). Hidden
// I/O: the share of the offload's disk time (bytes moved / measured bandwidth) not spent
// waiting. The planner's model against each measured variant, as ratios: the update (max(disk
// time of the bytes the memory model puts on disk, in-memory update)), under optimizer+params the
// passes' stall (the forward and backward over the in-memory run's; predicted from the memory
// model's slice reads against the in-memory passes' compute, plan::param_pass_stalls), and the
// whole step (the in-memory step with the update replaced and the stall added): the in-memory
// pieces are measured, so only the offload terms are under test. Several models (a comma list)
// run one after the other in one invocation.
// The weights of the runs are compared bitwise at the end (exit 1 if they differ).
#include <fmt/format.h>
#include <mpi.h>

#include <cstring>
#include <exception>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "comm/mpi_backend.h"
#include "core/async_file_io.h"
#include "core/memory.h"
#include "core/timer.h"
#include "kernels/kernels.h"
#include "nn/model.h"
#include "optim/adamw.h"
#include "optim/moment_store.h"
#include "parallel/ddp_reducer.h"
#include "plan/calibrate_disk.h"
#include "plan/cost_model.h"
#include "plan/memory_model.h"

#include "model_step_bench.h"

using namespace trident;

namespace {

struct Run {
  optim::OffloadKind kind = optim::OffloadKind::kNone;
  MemoryTracker tracker;
  std::unique_ptr<nn::Model> model;
  std::unique_ptr<optim::AdamW> adamw;
  std::unique_ptr<parallel::DataParallel> dp;  // --params: ZeRO-3 over one rank (after adamw: destroyed first)
  nn::ModelActivations acts;
  // Per step: the whole step, the update, the forward and the backward (head included, as the
  // planner counts it), and the I/O wait of the passes (optimizer+params: the slices' reads).
  std::vector<double> step_s, update_s, forward_s, backward_s, pass_wait_s;
  const char* name() const {
    return kind == optim::OffloadKind::kNone ? "in memory" : kind == optim::OffloadKind::kOptimizer ? "optimizer" : "opt+params";
  }
};

// The flat logical values of a run (ZeRO-3: read from its shard, wherever it lives).
std::vector<float> weights(Run& r) {
  nn::ParameterSet& ps = r.model->params();
  std::vector<float> out(static_cast<std::size_t>(ps.total_numel()));
  for (int id = 0; id < ps.size(); ++id) {
    float* at = out.data() + ps.info(id).offset;
    if (r.dp) {
      r.dp->read_shard_values(id, at);
    } else {
      std::memcpy(at, ps.data(id), static_cast<std::size_t>(ps.info(id).numel) * sizeof(float));
    }
  }
  return out;
}

bool bench_model(const bench::ModelStepArgs& a, const std::string& dir, int64_t block_kib, bool params,
                 comm::Communicator* self) {
  const nn::ModelConfig cfg = nn::model_preset(a.model);
  const int64_t B = a.rows, T = a.seq, N = B * T;
  const bench::SyntheticBatch batch = bench::synthetic_batch(cfg, N);
  const optim::AdamWConfig adam;
  std::vector<std::unique_ptr<Run>> runs;
  for (optim::OffloadKind k : {optim::OffloadKind::kNone, optim::OffloadKind::kOptimizer, optim::OffloadKind::kOptimizerParams}) {
    if (k == optim::OffloadKind::kOptimizerParams && !params) continue;
    auto r = std::make_unique<Run>();
    r->kind = k;
    r->model = std::make_unique<nn::Model>(cfg);
    r->model->allocate(r->tracker);
    nn::ParameterSet& ps = r->model->params();
    if (params) {
      parallel::DataParallelOptions zero3;
      zero3.zero = 3;
      zero3.offload_values = k == optim::OffloadKind::kOptimizerParams;
      r->dp = std::make_unique<parallel::DataParallel>(ps, *self, r->tracker, zero3);
    }
    const std::vector<optim::AdamW::FlatRange> owned =
        r->dp ? r->dp->optimizer_ranges() : std::vector<optim::AdamW::FlatRange>{{0, ps.total_numel()}};
    const int64_t n = optim::AdamW::moment_count(ps, owned);
    std::unique_ptr<optim::MomentStore> store;
    if (k != optim::OffloadKind::kNone) {
      store = optim::make_offloaded_moment_store(
          r->tracker, n, fmt::format("{}/trident-bench-offload-{}.state", dir, static_cast<int>(k)), block_kib * 1024,
          k == optim::OffloadKind::kOptimizerParams ? optim::ValueRuns{{0, n}} : optim::ValueRuns{});
    }
    r->adamw = std::make_unique<optim::AdamW>(ps, r->tracker, adam, owned, std::move(store));
    if (k == optim::OffloadKind::kOptimizerParams) r->dp->attach_value_store(r->adamw->moments());
    if (r->dp) {
      r->dp->initialize_shard(1337);
      r->model->set_hooks(r->dp.get());
    } else {
      ps.initialize(1337);
    }
    r->acts = r->model->make_activations(r->tracker, B, T);
    runs.push_back(std::move(r));
  }
  Run& mem = *runs[0];
  const int64_t P = mem.model->params().total_numel();
  auto step = [&](Run& r) {
    Stopwatch sw;
    if (r.dp) {
      r.dp->begin_step();
      r.dp->set_tokens(batch.ids.data(), N);
      r.dp->begin_micro_batch(true);
    } else {
      r.model->params().zero_grads();
    }
    // Model::forward_backward's pieces, timed apart: the planner prices the two passes' stalls
    // against their own compute.
    const double wait0 = r.adamw->moments().io_stats().wait_s;
    Stopwatch sf;
    r.model->embed_forward(r.acts, batch.ids.data(), B, T);
    r.model->blocks_forward(r.acts, B, T);
    r.forward_s.push_back(sf.seconds());
    Stopwatch sb;
    r.model->head_forward_backward(r.acts, batch.targets.data(), B, T, 1.0f / static_cast<float>(N));
    r.model->blocks_backward(r.acts, B, T);
    r.model->embed_backward(r.acts, B, T);
    if (r.dp) r.dp->end_micro_batch();
    r.backward_s.push_back(sb.seconds());
    r.pass_wait_s.push_back(r.adamw->moments().io_stats().wait_s - wait0);
    Stopwatch su;
    if (r.dp) {
      r.dp->optimizer_step(*r.adamw, 6e-4f, 1.0f);
    } else {
      nn::ParameterSet& ps = r.model->params();
      r.adamw->step(ps.values().data(), ps.grads().data(), 6e-4f, 1.0f);
    }
    r.update_s.push_back(su.seconds());
    r.step_s.push_back(sw.seconds());
  };
  fmt::print("offload bench: {} ({} parameters), batch {} x {} tokens, {} threads, {}median of {} steps "
             "(after one warm-up), {} alternating\n",
             a.model, P, B, T, a.threads, params ? "ZeRO-3 over one rank, " : "", a.steps,
             params ? "in memory, optimizer and optimizer+params offload" : "in memory and offloaded");
  for (std::size_t i = 1; i < runs.size(); ++i) fmt::print("{}: {}\n", runs[i]->name(), runs[i]->adamw->moments().describe());
  for (auto& r : runs) step(*r);  // warm-up: first touch, the file's first pass
  std::vector<optim::MomentStore::IoStats> io0;
  for (auto& r : runs) {
    r->step_s.clear(), r->update_s.clear(), r->forward_s.clear(), r->backward_s.clear(), r->pass_wait_s.clear();
    r->tracker.reset_peaks();
    io0.push_back(r->adamw->moments().io_stats());
  }
  for (int s = 0; s < a.steps; ++s) {
    for (auto& r : runs) step(*r);
  }
  const double t0 = bench::median(mem.step_s), u0 = bench::median(mem.update_s);
  const double m0 = static_cast<double>(mem.tracker.peak_total());
  fmt::print("{:>10} {:>10} {:>8} {:>11} {:>8} {:>16} {:>8} {:>12}\n", "state", "step ms", "ratio", "update ms",
             "ratio", "resident peak", "ratio", "offloaded");
  for (const auto& r : runs) {
    const double t = bench::median(r->step_s), u = bench::median(r->update_s);
    const auto peak = static_cast<double>(r->tracker.peak_total());
    fmt::print("{:>10} {:>10.1f} {:>7.3f}x {:>11.1f} {:>7.3f}x {:>16} {:>7.3f}x {:>12}\n", r->name(), 1e3 * t, t / t0,
               1e3 * u, u / u0, format_bytes(peak), peak / m0,
               format_bytes(static_cast<double>(r->tracker.peak(MemCategory::kOffloaded))));
  }
  // The planner's probe (plan/calibrate_disk.h), here as large as the moments.
  const plan::DiskCalibration disk = plan::calibrate_disk(dir, static_cast<std::size_t>(2 * block_kib * 1024),
                                                          static_cast<std::size_t>(8 * P));
  const double write_mbs = disk.model.write_bandwidth / 1e6, read_mbs = disk.model.read_bandwidth / 1e6;
  fmt::print("disk under {} ({}): sequential write {:.0f} MB/s, read {:.0f} MB/s\n", dir,
             disk.direct ? "O_DIRECT" : "buffered: the file system refuses O_DIRECT, the page cache is in the way",
             write_mbs, read_mbs);
  const double steps = a.steps;
  for (std::size_t i = 1; i < runs.size(); ++i) {
    Run& r = *runs[i];
    const optim::MomentStore::IoStats io1 = r.adamw->moments().io_stats();
    const double rd = (io1.bytes_read - io0[i].bytes_read) / steps, wr = (io1.bytes_written - io0[i].bytes_written) / steps;
    const double disk_s = rd / (read_mbs * 1e6) + wr / (write_mbs * 1e6);
    const double waited = (io1.wait_s - io0[i].wait_s) / steps;
    fmt::print("{} per step: read {}, wrote {}; at those rates {:.1f} ms of disk time, {:.1f} ms spent waiting "
               "for it: {:.0f}% hidden{}\n",
               r.name(), format_bytes(rd), format_bytes(wr), 1e3 * disk_s, 1e3 * waited,
               100.0 * std::max(0.0, 1.0 - waited / disk_s),
               r.kind == optim::OffloadKind::kOptimizerParams ? " (behind the layers' compute and the update)"
                                                              : " (behind the update)");
    // The planner's model of this variant (plan/cost_model.h, plan/memory_model.cpp) on the
    // in-memory run's measured pieces, so that only the offload terms are under test: the bytes
    // the memory model puts on disk and its slice reads, at the probe's bandwidth; the update as
    // max(disk time, in-memory update); the passes' stalls from their in-memory compute; the
    // step as the in-memory step with the update replaced and the stalls added.
    plan::PlanRequest req;
    req.model = cfg;
    req.batch_size = B, req.seq_len = T, req.micro_batches = 1;
    req.offload_block_bytes = static_cast<double>(block_kib) * 1024;
    plan::Layout layout;
    layout.zero = params ? 3 : 0;
    layout.offload = true;
    layout.offload_params = r.kind == optim::OffloadKind::kOptimizerParams;
    const plan::MemoryBreakdown pm = plan::predict_memory(req, layout).worst();
    const double io_pred = plan::offload_io_seconds(pm.offloaded, disk.model, 1);
    const double update_pred = plan::offloaded_update_seconds(io_pred, u0);
    const double f0 = bench::median(mem.forward_s), b0 = bench::median(mem.backward_s);
    const plan::PassStalls stall_pred = layout.offload_params
        ? plan::param_pass_stalls(pm.slice_reads, pm.first_slice, 1, disk.model.read_bandwidth, f0, b0)
        : plan::PassStalls{};
    const double stall_pred_s = stall_pred.forward_s + stall_pred.backward_s;
    const double step_pred = t0 - u0 + update_pred + stall_pred_s;
    const double u = bench::median(r.update_s), t = bench::median(r.step_s);
    const double stall = bench::median(r.forward_s) - f0 + bench::median(r.backward_s) - b0;
    const double pass_wait = bench::median(r.pass_wait_s);
    fmt::print("{} against the planner's model: update measured {:.1f} ms, predicted max(disk {:.1f} ms of {} "
               "each way, in-memory update {:.1f} ms) = {:.1f} ms: {:.3f}x\n",
               r.name(), 1e3 * u, 1e3 * io_pred, format_bytes(pm.offloaded), 1e3 * u0, 1e3 * update_pred,
               u / update_pred);
    if (layout.offload_params) {
      fmt::print("{} against the planner's model: passes' stall measured {:.1f} ms (forward + backward over the "
                 "in-memory ones; {:.1f} ms of it waiting for reads), predicted {:.1f} ms (forward {:.1f}: the "
                 "first group's {} read {:.1f} ms + what of {:.1f} ms of reads outlasts {:.1f} ms of compute; "
                 "backward {:.1f}: of {:.1f} ms behind {:.1f} ms){}\n",
                 r.name(), 1e3 * stall, 1e3 * pass_wait, 1e3 * stall_pred_s, 1e3 * stall_pred.forward_s,
                 format_bytes(pm.first_slice), 1e3 * std::min(pm.first_slice / disk.model.read_bandwidth, stall_pred.read_s),
                 1e3 * stall_pred.read_s, 1e3 * f0, 1e3 * stall_pred.backward_s, 1e3 * stall_pred.read_s, 1e3 * b0,
                 stall_pred_s > 0 ? fmt::format(": {:.3f}x", stall / stall_pred_s) : std::string());
    }
    fmt::print("{} against the planner's model: step measured {:.1f} ms, predicted {:.1f} ms (in-memory step "
               "{:.1f} - update {:.1f} + offloaded update {:.1f} + stall {:.1f}): {:.3f}x\n",
               r.name(), 1e3 * t, 1e3 * step_pred, 1e3 * t0, 1e3 * u0, 1e3 * update_pred, 1e3 * stall_pred_s,
               t / step_pred);
  }
  const std::vector<float> w0 = weights(mem);
  bool all_same = true;
  for (std::size_t i = 1; i < runs.size(); ++i) {
    const bool same = weights(*runs[i]) == w0;
    all_same = all_same && same;
    fmt::print("weights after {} steps, {} vs in memory: {}\n", a.steps + 1, runs[i]->name(),
               same ? "bitwise equal" : "DIFFER");
  }
  return all_same;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rc = 0;
  try {
    // --dir, --block-kib, --params and a comma list of --model are ours; the rest is the shared
    // model-step parser's.
    std::string dir = "/tmp", models = "small";
    int64_t block_kib = 4096;
    bool params = false;
    std::vector<char*> rest{argv[0]};
    for (int i = 1; i < argc; ++i) {
      const std::string k = argv[i];
      if (k == "--params") {
        params = true;
      } else if ((k == "--dir" || k == "--block-kib" || k == "--model") && i + 1 < argc) {
        const std::string v = argv[++i];
        if (k == "--dir") dir = v;
        else if (k == "--model") models = v;
        else block_kib = std::atoll(v.c_str());
      } else {
        rest.push_back(argv[i]);
      }
    }
    bench::ModelStepArgs a = bench::parse_model_step_args(static_cast<int>(rest.size()), rest.data());
    kernels::set_num_threads(a.threads);
    const auto self_owner = comm::make_mpi_communicator(MPI_COMM_SELF, "offload-bench");
    comm::Communicator& self = *self_owner;
    std::stringstream list(models);
    for (std::string m; std::getline(list, m, ',');) {
      a.model = m;
      if (!bench_model(a, dir, block_kib, params, &self)) rc = 1;
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "offload bench: {}\n", e.what());
    rc = 2;
  }
  MPI_Finalize();
  return rc;
}
