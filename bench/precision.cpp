// build/bench/precision: training tokens/s of --precision bf16 against fp32, single process.
// Usage: build/bench/precision [--model small] [--rows 4] [--seq 256] [--steps 5] [--threads 2]
// One model per precision from the same seed; the steps (forward + backward of one micro-batch;
// AdamW and the gradient norm are fp32 in both, so they are left out) alternate between the
// two round by round, so drift on a shared machine hits both alike, and each median step is
// printed as tokens/s and as a ratio against fp32's (issue 13's target: bf16 >= 1.6x). The
// bf16 run's matmul backend is printed; its loss is printed next to fp32's.
#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "core/memory.h"
#include "core/timer.h"
#include "kernels/kernels.h"
#include "kernels/matmul_engine.h"
#include "nn/model.h"

using namespace trident;

namespace {

struct Args {
  std::string model = "small";
  int64_t rows = 4, seq = 256;
  int steps = 5, threads = 2;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (i + 1 >= argc) throw std::runtime_error(fmt::format("{} needs a value", k));
    const char* v = argv[++i];
    if (k == "--model") a.model = v;
    else if (k == "--rows") a.rows = std::atoll(v);
    else if (k == "--seq") a.seq = std::atoll(v);
    else if (k == "--steps") a.steps = std::atoi(v);
    else if (k == "--threads") a.threads = std::atoi(v);
    else throw std::runtime_error(fmt::format("unknown argument {}", k));
  }
  if (a.rows < 1 || a.seq < 1 || a.steps < 1 || a.threads < 1) {
    throw std::runtime_error("--rows, --seq, --steps and --threads must be positive");
  }
  return a;
}

struct Run {
  kernels::Precision precision;
  MemoryTracker tracker;
  std::unique_ptr<nn::Model> model;
  nn::ModelActivations acts;
  std::vector<double> seconds;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args a = parse(argc, argv);
    kernels::set_num_threads(a.threads);
    const nn::ModelConfig cfg = nn::model_preset(a.model);
    const int64_t B = a.rows, T = a.seq, N = B * T;
    std::vector<int32_t> ids(static_cast<std::size_t>(N)), targets(ids.size());
    for (int64_t i = 0; i < N; ++i) {
      ids[static_cast<std::size_t>(i)] = static_cast<int32_t>((i * 7 + 3) % cfg.vocab_size);
      targets[static_cast<std::size_t>(i)] = static_cast<int32_t>((i * 11 + 5) % cfg.vocab_size);
    }
    std::vector<std::unique_ptr<Run>> runs;
    for (kernels::Precision p : {kernels::Precision::kFp32, kernels::Precision::kBf16}) {
      auto r = std::make_unique<Run>();
      r->precision = p;
      r->model = std::make_unique<nn::Model>(cfg);
      r->model->set_precision(p);
      r->model->allocate(r->tracker);
      r->model->params().initialize(1337);
      r->acts = r->model->make_activations(r->tracker, B, T);
      runs.push_back(std::move(r));
    }
    std::vector<double> loss(runs.size());
    auto step = [&](std::size_t i) {
      Run& r = *runs[i];
      r.model->params().zero_grads();
      Stopwatch sw;
      loss[i] = r.model->forward_backward(r.acts, ids.data(), targets.data(), B, T, 1.0f / static_cast<float>(N)) /
                static_cast<double>(N);
      return sw.seconds();
    };
    fmt::print("precision bench: {} ({} layers), batch {} x {} tokens, {} threads, median of {} steps "
               "(after one warm-up), precisions alternating\nbf16 matmuls: {}\n",
               a.model, cfg.n_layer, B, T, a.threads, a.steps, runs.back()->model->matmul().describe());
    for (std::size_t i = 0; i < runs.size(); ++i) step(i);  // warm-up: first touch, oneDNN primitives
    for (int s = 0; s < a.steps; ++s) {
      for (std::size_t i = 0; i < runs.size(); ++i) runs[i]->seconds.push_back(step(i));
    }
    const double t0 = median(runs.front()->seconds);
    fmt::print("{:>9} {:>10} {:>12} {:>8} {:>10}\n", "precision", "step ms", "tokens/s", "ratio", "loss");
    for (std::size_t i = 0; i < runs.size(); ++i) {
      const double t = median(runs[i]->seconds);
      fmt::print("{:>9} {:>10.1f} {:>12.0f} {:>7.3f}x {:>10.5f}\n",
                 kernels::precision_names()[static_cast<std::size_t>(runs[i]->precision)], 1e3 * t,
                 static_cast<double>(N) / t, t0 / t, loss[i]);
    }
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "precision bench: {}\n", e.what());
    return 2;
  }
}
