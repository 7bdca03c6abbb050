// `trident plan --model PRESET --world N [--memory-per-rank BYTES]`: lists the dp x tp x pp
// layouts (with ZeRO stage, schedule and micro-batches) that fit, with predicted per-rank
// memory by category and predicted step time, ranked by tokens/s. Compute costs are measured
// here, once, on one thread per rank (plan/cost_model.h); the models are in src/plan/.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <string>
#include <thread>

#include "cli/commands.h"
#include "core/check.h"
#include "plan/planner.h"
#include "train/run_config.h"

namespace trident::cli {
namespace {

// "8GiB", "512MiB", "2G", "1.5e9", "0" -> bytes.
double parse_bytes(const std::string& text) {
  std::size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    TRI_FAIL("--memory-per-rank '{}' is not a byte count; write e.g. 2GiB, 512MiB or 1e9", text);
  }
  std::string unit = text.substr(used);
  std::transform(unit.begin(), unit.end(), unit.begin(), [](unsigned char c) { return std::tolower(c); });
  double mult = 1;
  if (unit.empty() || unit == "b") mult = 1;
  else if (unit == "k" || unit == "kib" || unit == "kb") mult = 1024.0;
  else if (unit == "m" || unit == "mib" || unit == "mb") mult = 1024.0 * 1024;
  else if (unit == "g" || unit == "gib" || unit == "gb") mult = 1024.0 * 1024 * 1024;
  else if (unit == "t" || unit == "tib" || unit == "tb") mult = 1024.0 * 1024 * 1024 * 1024;
  else TRI_FAIL("--memory-per-rank '{}': unknown unit '{}'; use B, KiB, MiB, GiB or TiB", text, unit);
  TRI_CHECK(v >= 0, "--memory-per-rank must not be negative, got {}", text);
  return v * mult;
}

}  // namespace

int run_plan(int argc, char** argv) {
  CLI::App app{"Predict per-rank memory and step time of every dp x tp x pp layout (ZeRO stage, "
               "pipeline schedule, micro-batches) of a model on N ranks, ranked by tokens/s among "
               "those that fit. Compute costs are measured on this machine at start.",
               "trident plan"};
  std::string model = "small", memory = "0";
  int world = 0, micro_batches = 0, cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  int threads = 0, top = 0;
  int64_t batch = 8, seq = 0;
  double bucket_mb = 25.0, link_gbps = 0, latency_us = 20, flops = 0;
  bool sp = false, all = false, no_overlap = false;
  app.add_option("--model", model, "preset (tiny, small, gpt2, gpt2-medium) or a config.json")->capture_default_str();
  app.add_option("--world", world, "ranks (dp * tp * pp)")->required();
  app.add_option("--memory-per-rank", memory, "bytes each rank may use (e.g. 2GiB); 0: unlimited")->capture_default_str();
  app.add_option("--batch-size", batch, "global sequences per optimizer step")->capture_default_str();
  app.add_option("--seq-len", seq, "tokens per sequence; default: the model's n_positions");
  app.add_option("--micro-batches", micro_batches, "micro-batches per dp rank; 0: try every divisor")->capture_default_str();
  app.add_flag("--sequence-parallel", sp, "plan tp layouts with sequence parallelism");
  app.add_option("--bucket-mb", bucket_mb, "DDP/ZeRO gradient bucket size, MiB")->capture_default_str();
  app.add_option("--cores", cores, "cores all ranks share (one machine)")->capture_default_str();
  app.add_option("--threads", threads, "threads per rank; default: max(1, cores / world)");
  app.add_option("--link-gbps", link_gbps, "link bandwidth in Gbit/s; default: measured memcpy / 2 (shared memory)");
  app.add_option("--latency-us", latency_us, "per-message latency, microseconds")->capture_default_str();
  app.add_option("--flops", flops, "use this FLOP/s per rank instead of timing the model here");
  app.add_flag("--no-overlap", no_overlap, "dp communication does not overlap backward");
  app.add_flag("--all", all, "show every micro-batch count (default: the best fitting one per layout)");
  app.add_option("--top", top, "show at most this many rows; 0: all")->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  plan::PlanRequest req;
  train::ModelOptions mo;
  mo.model = model;
  req.model = train::resolve_model_config(mo);
  req.world = world;
  req.batch_size = batch;
  req.seq_len = seq > 0 ? seq : req.model.n_positions;
  req.micro_batches = micro_batches;
  req.sequence_parallel = sp;
  req.bucket_mb = bucket_mb;
  req.memory_per_rank = parse_bytes(memory);
  plan::validate_request(req);
  TRI_CHECK(cores >= 1, "--cores must be at least 1, got {}", cores);

  plan::MachineModel machine;
  machine.cores = cores;
  machine.threads_per_rank = threads > 0 ? threads : std::max(1, cores / world);
  machine.overlap = !no_overlap;
  machine.comm.latency = latency_us * 1e-6;
  machine.comm.bandwidth = link_gbps > 0 ? link_gbps * 1e9 / 8 : plan::measure_memcpy_bandwidth() / 2;

  std::unique_ptr<plan::ComputeModel> compute;
  plan::MeasuredComputeModel* measured = nullptr;
  if (flops > 0) {
    compute = std::make_unique<plan::FlopComputeModel>(req.model, flops);
  } else {
    auto m = std::make_unique<plan::MeasuredComputeModel>(req.model, machine.threads_per_rank);
    measured = m.get();
    compute = std::move(m);
  }
  fmt::print("model {}: {}\n", model, req.model.describe());
  fmt::print("machine: {} cores shared by {} ranks x {} thread(s); links {:.2f} GB/s, {:.0f} us latency{}\n",
             cores, world, machine.threads_per_rank, machine.comm.bandwidth / 1e9, latency_us,
             link_gbps > 0 ? "" : " (bandwidth: measured memcpy / 2)");
  std::fflush(stdout);
  const plan::Plan p = plan::make_plan(req, *compute, machine);
  if (measured) {
    fmt::print("compute costs measured on this machine in {:.1f} s (one block, embedding, head, AdamW)\n",
               measured->calibration_seconds());
  } else {
    fmt::print("compute costs: {:.3g} FLOP/s per rank (--flops)\n", flops);
  }
  plan::FormatOptions fo;
  fo.all = all;
  fo.top = top;
  std::fputs(plan::format_plan(p, req, fo).c_str(), stdout);
  const plan::PlanRow& best = p.rows.front();
  fmt::print("best: scripts/trident-mpirun -n {} build/trident train --model {} --batch-size {} --seq-len {} {}{}\n",
             world, model, req.batch_size, req.seq_len, best.layout.train_flags(),
             machine.threads_per_rank > 1 ? fmt::format(" --threads {}", machine.threads_per_rank) : "");
  return 0;
}

}  // namespace trident::cli
