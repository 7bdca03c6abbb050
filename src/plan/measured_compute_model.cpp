// MeasuredComputeModel (see cost_model.h): times the model's own pieces -- a block's forward and
// backward, the embedding, the head, the AdamW update -- with the run's kernels, threads and
// matmul precision; and the memcpy bandwidth the offload and copy costs use.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/check.h"
#include "core/memory.h"
#include "core/rng.h"
#include "core/timer.h"
#include "kernels/kernels.h"
#include "nn/architecture.h"
#include "nn/model.h"
#include "plan/cost_model.h"
#include "plan/memory_model.h"

namespace trident::plan {

namespace {

void fill_small(float* x, int64_t n, uint64_t seed) {
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (int64_t i = 0; i < n; ++i) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    x[i] = static_cast<float>(static_cast<int64_t>(s % 2001) - 1000) * 1e-4f;
  }
}

// Best of a few runs of fn after a warm-up (at least 2 timed runs, up to `budget` seconds).
template <class F>
double time_best(F&& fn, double budget = 0.25) {
  fn();
  double best = 1e30, spent = 0;
  for (int i = 0; i < 5 && (i < 2 || spent < budget); ++i) {
    Stopwatch sw;
    fn();
    const double s = sw.seconds();
    best = std::min(best, s);
    spent += s;
  }
  return best;
}

}  // namespace

MeasuredComputeModel::MeasuredComputeModel(const nn::ModelConfig& m, int threads, kernels::Precision precision)
    : m_(m), threads_(std::max(1, threads)), precision_(precision) {}

// Alone: the best of a few runs. Together (sync_): all ranks start at once and run the piece
// a fixed number of times (so they all compete until the end), each takes its best run (the
// machine may be shared with other jobs whose load comes and goes), the median over ranks is
// converted to one core's seconds.
template <class F>
double MeasuredComputeModel::time_piece(F&& fn, double budget) {
  if (!sync_) return time_best(fn, budget);
  sync_->begin();
  fn();
  constexpr int kRuns = 3;
  double best = 1e30;
  for (int i = 0; i < kRuns; ++i) {
    Stopwatch sw;
    fn();
    best = std::min(best, sw.seconds());
  }
  return sync_->combine(best) * sync_->core_share();
}

const MeasuredComputeModel::BlockTimes& MeasuredComputeModel::block(int tp, bool sp, int64_t B, int64_t T) {
  const int64_t Tc = std::min<int64_t>(T, 2048);
  const int64_t Bc = std::clamp<int64_t>(B, 1, std::max<int64_t>(1, 2048 / Tc));
  auto key = std::make_tuple(tp, sp, Bc, Tc);
  auto it = blocks_.find(key);
  if (it != blocks_.end()) return it->second;
  Stopwatch total;
  kernels::set_num_threads(threads_);
  auto comm = make_null_tp_comm(0, tp);
  // The layer block_forward_flops prices (the last), so the FLOP scaling holds for it.
  nn::Model g(m_, nn::TpContext{0, tp, tp > 1 ? comm.get() : nullptr, sp, {}},
              nn::StageSpec{m_.n_layer - 1, m_.n_layer, false, false});
  g.set_precision(precision_);
  MemoryTracker tracker;
  g.allocate(tracker);
  g.params().initialize(1);
  nn::ModelActivations acts = g.make_activations(tracker, Bc, Tc);
  const int64_t rows = g.local_rows(Bc * Tc) * m_.n_embd;
  fill_small(acts.stage_input(), rows, 1);
  const double fwd = time_piece([&] { g.blocks_forward(acts, Bc, Tc); }, 0.25);
  std::vector<float> dout(static_cast<std::size_t>(rows));
  fill_small(dout.data(), rows, 2);
  const double bwd = time_piece([&] {
    std::memcpy(g.prepare_residual_grad(Bc, Tc), dout.data(), dout.size() * sizeof(float));
    g.blocks_backward(acts, Bc, Tc);
  }, 0.25);
  calib_s_ += total.seconds();
  return blocks_[key] = BlockTimes{fwd, bwd, Bc, Tc};
}

const MeasuredComputeModel::EndTimes& MeasuredComputeModel::ends(int tp, bool sp, int64_t T) {
  const int64_t Tc = std::min<int64_t>(T, 256), Bc = 1;
  auto key = std::make_tuple(tp, sp, Tc);
  auto it = ends_.find(key);
  if (it != ends_.end()) return it->second;
  Stopwatch total;
  kernels::set_num_threads(threads_);
  auto comm = make_null_tp_comm(0, tp);
  const nn::TpContext ctx{0, tp, tp > 1 ? comm.get() : nullptr, sp, {}};
  MemoryTracker tracker;
  const int64_t N = Bc * Tc;
  std::vector<int32_t> ids(static_cast<std::size_t>(N));
  for (int64_t i = 0; i < N; ++i) ids[static_cast<std::size_t>(i)] = static_cast<int32_t>((i * 7919) % m_.vocab_size);

  nn::Model emb(m_, ctx, nn::StageSpec{0, 0, true, false});
  emb.set_precision(precision_);
  emb.allocate(tracker);
  emb.params().initialize(1);
  nn::ModelActivations ea = emb.make_activations(tracker, Bc, Tc);
  const double efwd = time_piece([&] { emb.embed_forward(ea, ids.data(), Bc, Tc); }, 0.05);
  const int64_t rows = emb.local_rows(N) * m_.n_embd;
  std::vector<float> dout(static_cast<std::size_t>(rows));
  fill_small(dout.data(), rows, 3);
  const double ebwd = time_piece([&] {
    std::memcpy(emb.prepare_residual_grad(Bc, Tc), dout.data(), dout.size() * sizeof(float));
    emb.embed_backward(ea, Bc, Tc);
  }, 0.05);

  nn::Model head(m_, ctx, nn::StageSpec{m_.n_layer, m_.n_layer, false, true});
  head.set_precision(precision_);
  head.allocate(tracker);
  head.params().initialize(1);
  nn::ModelActivations ha = head.make_activations(tracker, Bc, Tc);
  fill_small(ha.stage_output(), rows, 4);
  const double h = time_piece([&] {
    head.head_forward_backward(ha, ids.data(), Bc, Tc, 1.0f / static_cast<float>(N));
  }, 0.25);
  calib_s_ += total.seconds();
  return ends_[key] = EndTimes{efwd, ebwd, h, Bc, Tc};
}

double MeasuredComputeModel::block_forward(int tp, bool sp, int64_t B, int64_t T) {
  const BlockTimes& b = block(tp, sp, B, T);
  return b.fwd * block_forward_flops(m_, tp, B, T) / block_forward_flops(m_, tp, b.B, b.T);
}
double MeasuredComputeModel::block_backward(int tp, bool sp, int64_t B, int64_t T) {
  const BlockTimes& b = block(tp, sp, B, T);
  return b.bwd * block_forward_flops(m_, tp, B, T) / block_forward_flops(m_, tp, b.B, b.T);
}
double MeasuredComputeModel::embed_forward(int tp, bool sp, int64_t B, int64_t T) {
  const EndTimes& e = ends(tp, sp, T);
  return e.embed_fwd * static_cast<double>(B * T) / static_cast<double>(e.B * e.T);
}
double MeasuredComputeModel::embed_backward(int tp, bool sp, int64_t B, int64_t T) {
  const EndTimes& e = ends(tp, sp, T);
  return e.embed_bwd * static_cast<double>(B * T) / static_cast<double>(e.B * e.T);
}
double MeasuredComputeModel::head(int tp, bool sp, int64_t B, int64_t T) {
  const EndTimes& e = ends(tp, sp, T);
  return e.head * static_cast<double>(B * T) / static_cast<double>(e.B * e.T);
}
double MeasuredComputeModel::optimizer(int64_t elements) {
  if (optimizer_per_elem_ < 0) {
    Stopwatch total;
    kernels::set_num_threads(threads_);
    const int64_t n = 1 << 21;
    std::vector<float> p(n, 0.1f), g(n, 0.01f), m(n, 0.0f), v(n, 0.0f);
    int64_t t = 0;
    const double s = time_piece([&] {
      std::memset(g.data(), 0, g.size() * sizeof(float));
      volatile double sq = kernels::sum_squares(g.data(), n);
      (void)sq;
      kernels::adamw_update(p.data(), g.data(), m.data(), v.data(), n, 1e-3f, 0.9f, 0.95f, 1e-8f,
                            0.1f, ++t, 1.0f);
    }, 0.05);
    optimizer_per_elem_ = s / static_cast<double>(n);
    calib_s_ += total.seconds();
  }
  return optimizer_per_elem_ * static_cast<double>(elements);
}

double measure_memcpy_bandwidth(double seconds) {
  const std::size_t n = 32u << 20;
  std::vector<char> a(n, 1), b(n, 2);
  std::memcpy(b.data(), a.data(), n);
  Stopwatch sw;
  int calls = 0;
  do {
    std::memcpy(calls % 2 ? a.data() : b.data(), calls % 2 ? b.data() : a.data(), n);
    ++calls;
  } while (sw.seconds() < seconds);
  return static_cast<double>(n) * calls / sw.seconds();
}

}  // namespace trident::plan
