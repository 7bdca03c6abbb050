// What the single-process model-step benchmarks (bench/precision, bench/recompute) share: their
// arguments, a fixed synthetic batch and the median of the timed steps. Each benchmark builds one
// model per variant from the same seed and alternates their steps round by round.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "nn/model_config.h"

namespace trident::bench {

struct ModelStepArgs {
  std::string model = "small";
  int64_t rows = 4, seq = 256;
  int steps = 5, threads = 2;
};

// --model, --rows, --seq, --steps, --threads; throws on anything else or a non-positive count.
inline ModelStepArgs parse_model_step_args(int argc, char** argv) {
  ModelStepArgs a;
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

// N token ids and targets in the vocabulary, the same in every run (no data files needed).
struct SyntheticBatch {
  std::vector<int32_t> ids, targets;
};

inline SyntheticBatch synthetic_batch(const nn::ModelConfig& cfg, int64_t N) {
  SyntheticBatch b{std::vector<int32_t>(static_cast<std::size_t>(N)), std::vector<int32_t>(static_cast<std::size_t>(N))};
  for (int64_t i = 0; i < N; ++i) {
    b.ids[static_cast<std::size_t>(i)] = static_cast<int32_t>((i * 7 + 3) % cfg.vocab_size);
    b.targets[static_cast<std::size_t>(i)] = static_cast<int32_t>((i * 11 + 5) % cfg.vocab_size);
  }
  return b;
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace trident::bench
