// build/bench/recompute: what activation recomputation (--recompute, nn/recompute.h) costs in
// step time and saves in activation memory, single process.
// Usage: build/bench/recompute [--model small] [--rows 4] [--seq 256] [--steps 5] [--threads 2]
// One model per mode (none, selective, full) from the same seed; the steps (forward + backward
// of one micro-batch; the optimizer is the same in every mode, so it is left out) alternate
// between the modes round by round, so drift on a shared machine hits all three alike, and each
// mode's median step is printed as a ratio against none's. Activation bytes are the tracker's
// (every micro-batch's own plus the model's recompute working set), next to the target of
// issue 13: full <= none / n_layer + one layer's working set. Each mode's gradients are also
// compared bitwise with none's (a recompute that changed the numbers would be no benchmark).
#include <fmt/format.h>

#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "core/memory.h"
#include "core/timer.h"
#include "kernels/kernels.h"
#include "nn/architecture.h"
#include "nn/model.h"

#include "model_step_bench.h"

using namespace trident;

namespace {

struct Run {
  nn::Recompute mode;
  MemoryTracker tracker;
  std::unique_ptr<nn::Model> model;
  nn::ModelActivations acts;
  std::vector<double> seconds;
};

}  // namespace

int main(int argc, char** argv) {
  try {
    const bench::ModelStepArgs a = bench::parse_model_step_args(argc, argv);
    kernels::set_num_threads(a.threads);
    const nn::ModelConfig cfg = nn::model_preset(a.model);
    const int64_t B = a.rows, T = a.seq, N = B * T;
    const bench::SyntheticBatch batch = bench::synthetic_batch(cfg, N);
    const std::vector<int32_t>& ids = batch.ids;
    const std::vector<int32_t>& targets = batch.targets;
    std::vector<std::unique_ptr<Run>> runs;
    for (nn::Recompute m : {nn::Recompute::kNone, nn::Recompute::kSelective, nn::Recompute::kFull}) {
      auto r = std::make_unique<Run>();
      r->mode = m;
      r->model = std::make_unique<nn::Model>(cfg);
      r->model->set_recompute(m);
      r->model->allocate(r->tracker);
      r->model->params().initialize(1337);
      r->acts = r->model->make_activations(r->tracker, B, T);
      runs.push_back(std::move(r));
    }
    auto step = [&](Run& r) {
      r.model->params().zero_grads();
      Stopwatch sw;
      r.model->forward_backward(r.acts, ids.data(), targets.data(), B, T, 1.0f / static_cast<float>(N));
      return sw.seconds();
    };
    fmt::print("recompute bench: {} ({} layers), batch {} x {} tokens, {} threads, median of {} steps "
               "(after one warm-up), modes alternating\n",
               a.model, cfg.n_layer, B, T, a.threads, a.steps);
    for (auto& r : runs) step(*r);  // warm-up: first-touch of the buffers, the rerun's allocation
    for (int s = 0; s < a.steps; ++s) {
      for (auto& r : runs) r->seconds.push_back(step(*r));
    }
    const Run& none = *runs.front();
    const std::size_t P = static_cast<std::size_t>(none.model->params().total_numel());
    const double t0 = bench::median(none.seconds);
    const double act0 = static_cast<double>(none.tracker.peak(MemCategory::kActivations));
    fmt::print("{:>10} {:>10} {:>8} {:>14} {:>8} {:>12}\n", "recompute", "step ms", "ratio",
               "activations", "ratio", "grads");
    for (const auto& r : runs) {
      const double t = bench::median(r->seconds);
      const double act = static_cast<double>(r->tracker.peak(MemCategory::kActivations));
      const bool same = std::memcmp(r->model->params().grads().data(), none.model->params().grads().data(),
                                    P * sizeof(float)) == 0;
      fmt::print("{:>10} {:>10.1f} {:>7.3f}x {:>14} {:>7.3f}x {:>12}\n", nn::recompute_name(r->mode),
                 1e3 * t, t / t0, format_bytes(act), act / act0, same ? "bitwise" : "DIFFER");
    }
    // Issue 13's target for full recompute: one layer's working set is what the rerun holds
    // (a layer's activations plus its (N, C) output).
    const nn::Model& full = *runs.back()->model;
    const double working = static_cast<double>(full.recompute_bytes(B, T));
    const double full_act = static_cast<double>(runs.back()->tracker.peak(MemCategory::kActivations));
    const double target = act0 / cfg.n_layer + working;
    fmt::print("full, all activations: {} against none / n_layer + one layer's working set = {} + {} "
               "= {} ({:.2f}x the target; the head's buffers, logits included, are kept in every mode)\n",
               format_bytes(full_act), format_bytes(act0 / cfg.n_layer), format_bytes(working),
               format_bytes(target), full_act / target);
    // The same target on the layers' share alone (the residual stream and the layers' buffers).
    const double C = static_cast<double>(cfg.n_embd), Nd = static_cast<double>(N), L = cfg.n_layer;
    const double layer = static_cast<double>(nn::architecture(cfg.family).layer_activation_bytes(
        cfg, 1, B, T, -1, 0, full.operand_storage()));
    const double full_layers = 4.0 * L * Nd * C + working, none_layers = L * (4.0 * Nd * C + layer);
    fmt::print("full, the layers' share: {} against {} / n_layer + {} = {} ({:.2f}x the target)\n",
               format_bytes(full_layers), format_bytes(none_layers), format_bytes(working),
               format_bytes(none_layers / L + working), full_layers / (none_layers / L + working));
    for (const auto& r : runs) {
      if (std::memcmp(r->model->params().grads().data(), none.model->params().grads().data(), P * sizeof(float))) {
        return 1;
      }
    }
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "recompute bench: {}\n", e.what());
    return 2;
  }
}
