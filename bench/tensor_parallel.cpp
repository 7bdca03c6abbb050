// build/bench/tensor_parallel: what tensor parallelism costs and saves, measured against the
// theory. Per training step (one micro-batch, forward + backward) it counts every element the
// tp group communicates, by wrapping the model's TensorParallelComm, and compares with the formulas below; and it compares this
// rank's activation memory (MemoryTracker) with Korthikanti et al. 2022's formulas converted
// to what Trident stores (fp32, no dropout). Timings are printed for information only.
//
// Usage: scripts/trident-mpirun -n 2|4 build/bench/tensor_parallel
//          [--layers 4] [--embd 256] [--heads 8] [--seq 128] [--batch 4] [--vocab 50257]
//
// Theory, b batch, s sequence, h = n_embd, L layers, t = tp, elements of fp32 (4 bytes):
//   without sequence parallelism (allreduce only):
//     per layer 2 allreduces forward (attn.c_proj, mlp.c_proj outputs) + 2 backward (inputs
//     of c_attn, mlp.c_fc) of b*s*h each; the embedding's forward allreduce (b*s*h); the
//     head's backward allreduce of dlnf (b*s*h); the loss: row max (b*s) and
//     [sum-exp | target logit] (2*b*s):
//       allreduce elements = (4L + 2) bsh + 3 bs
//   with sequence parallelism:
//       all_gather     = (6L + 2) bsh  (per layer: 2 forward, 2 backward conjugates of the
//                        reduce_scatters, 2 backward re-gathers of the saved LayerNorm outputs;
//                        ln_f forward; the embedding's backward)
//       reduce_scatter = (4L + 2) bsh  (per layer 2 forward + 2 backward; embedding forward;
//                        head backward)
//       allreduce      = 3 bs + (4L + 2) h  (loss; the LayerNorm gradients' row shares,
//                        summed inside backward: 4h per block, 2h for ln_f)
//   Bytes a rank sends with ring algorithms: allreduce 2(t-1)/t * 4n, all_gather and
//   reduce_scatter (t-1)/t * 4n for an n-element (full) buffer.
#include <mpi.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "comm/mesh.h"
#include "comm/mpi_backend.h"
#include "comm/runtime.h"
#include "core/check.h"
#include "core/memory.h"
#include "kernels/kernels.h"
#include "nn/architecture.h"
#include "nn/model.h"
#include "parallel/tensor_parallel_comm.h"

namespace trident {
namespace {

// Counts the elements of every collective the model issues (the full buffer: the allreduce
// count, or sum(counts) for all_gather / reduce_scatter), then forwards it.
class CountingComm final : public nn::TensorParallelComm {
 public:
  explicit CountingComm(nn::TensorParallelComm& inner) : inner_(inner) {}
  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  void allreduce_sum(float* d, int64_t n) override { add("allreduce", n), inner_.allreduce_sum(d, n); }
  void allreduce_max(float* d, int64_t n) override { add("allreduce", n), inner_.allreduce_max(d, n); }
  void reduce_scatter_sum(const float* in, float* out, std::span<const int64_t> counts) override {
    add("reduce_scatter", std::accumulate(counts.begin(), counts.end(), int64_t{0}));
    inner_.reduce_scatter_sum(in, out, counts);
  }
  void all_gather(const float* in, float* out, std::span<const int64_t> counts) override {
    add("all_gather", std::accumulate(counts.begin(), counts.end(), int64_t{0}));
    inner_.all_gather(in, out, counts);
  }
  void all_gather16(const uint16_t* in, uint16_t* out, std::span<const int64_t> counts) override {
    add("all_gather16", std::accumulate(counts.begin(), counts.end(), int64_t{0}));
    inner_.all_gather16(in, out, counts);
  }
  struct Tally {
    int64_t calls = 0, elements = 0;
  };
  std::map<std::string, Tally> tally;
  void reset() { tally.clear(); }

 private:
  void add(const char* op, int64_t n) {
    Tally& t = tally[op];
    ++t.calls;
    t.elements += n;
  }
  nn::TensorParallelComm& inner_;
};

struct Args {
  int layers = 4, embd = 256, heads = 8, seq = 128, batch = 4, vocab = 50257;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    TRI_CHECK(i + 1 < argc, "option {} needs a value", k);
    const int v = std::atoi(argv[++i]);
    if (k == "--layers") a.layers = v;
    else if (k == "--embd") a.embd = v;
    else if (k == "--heads") a.heads = v;
    else if (k == "--seq") a.seq = v;
    else if (k == "--batch") a.batch = v;
    else if (k == "--vocab") a.vocab = v;
    else TRI_FAIL("unknown option {}; known: --layers --embd --heads --seq --batch --vocab", k);
  }
  return a;
}

double ring_factor(const std::string& op, int t) {
  return (op == "allreduce" ? 2.0 : 1.0) * (t - 1) / static_cast<double>(t);
}

void run(const Args& args) {
  int world = 1, rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  nn::ModelConfig cfg;
  cfg.n_layer = args.layers, cfg.n_head = args.heads, cfg.n_embd = args.embd;
  cfg.n_positions = std::max(args.seq, 16), cfg.vocab_size = args.vocab;
  parallel::validate_tensor_parallel(cfg, world, world);
  comm::Mesh mesh(comm::make_mpi_communicator(MPI_COMM_WORLD, "world"), {1, 1, world});
  parallel::CommTensorParallel tp_comm(mesh.tp());
  CountingComm counting(tp_comm);
  const int t = world;
  const int64_t b = args.batch, s = args.seq, h = args.embd, L = args.layers, a = args.heads;
  const int64_t bs = b * s, bsh = b * s * h;
  const bool out = rank == 0;
  if (out) {
    fmt::print("# tensor parallel: tp {} ({} ranks), {} ; b {} s {}\n", t, world, cfg.describe(), b, s);
  }
  std::vector<int32_t> ids(static_cast<std::size_t>(bs)), targets(ids.size());
  for (int64_t i = 0; i < bs; ++i) {
    ids[static_cast<std::size_t>(i)] = static_cast<int32_t>((i * 7919 + 13) % cfg.vocab_size);
    targets[static_cast<std::size_t>(i)] = static_cast<int32_t>((i * 104729 + 5) % cfg.vocab_size);
  }

  for (bool sp : {false, true}) {
    MemoryTracker tracker;
    nn::Model model(cfg, parallel::make_tp_context(counting, sp));
    model.allocate(tracker);
    model.params().initialize(1);
    nn::ModelActivations acts = model.make_activations(tracker, b, s);
    const double act_bytes = static_cast<double>(tracker.current(MemCategory::kActivations));
    // One warm-up step (allocates the scratch), then the measured step.
    model.forward_backward(acts, ids.data(), targets.data(), b, s, 1.0f / static_cast<float>(bs));
    counting.reset();
    tracker.reset_peaks();
    mesh.tp().barrier().wait();
    const auto t0 = std::chrono::steady_clock::now();
    const double loss = model.forward_backward(acts, ids.data(), targets.data(), b, s,
                                               1.0f / static_cast<float>(bs));
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    // ---- communication ----
    std::map<std::string, int64_t> theory;
    if (!sp) {
      theory["allreduce"] = (4 * L + 2) * bsh + 3 * bs;
    } else {
      theory["all_gather"] = (6 * L + 2) * bsh;
      theory["reduce_scatter"] = (4 * L + 2) * bsh;
      theory["allreduce"] = 3 * bs + (4 * L + 2) * h;
    }
    if (out) {
      fmt::print("\n## {} (loss {:.4f}, step {:.3f} s on this machine)\n",
                 sp ? "with sequence parallelism" : "without sequence parallelism", loss / bs, secs);
      fmt::print("{:>15} {:>6} {:>14} {:>14} {:>8} {:>14}\n", "collective", "calls", "elements",
                 "theory", "ratio", "ring MiB/rank");
    }
    double total_wire = 0, total_elems = 0;
    for (const auto& [op, th] : theory) {
      const CountingComm::Tally got = counting.tally[op];
      const double wire = ring_factor(op, t) * 4.0 * static_cast<double>(got.elements);
      total_wire += wire, total_elems += static_cast<double>(got.elements);
      if (out) {
        fmt::print("{:>15} {:>6} {:>14} {:>14} {:>8.4f} {:>14.2f}\n", op, got.calls, got.elements, th,
                   static_cast<double>(got.elements) / static_cast<double>(th), wire / (1 << 20));
      }
      TRI_CHECK(got.elements == th, "{}: counted {} elements, theory {}", op, got.elements, th);
    }
    for (const auto& [op, got] : counting.tally) {
      TRI_CHECK(theory.count(op), "unexpected collective {} ({} calls)", op, got.calls);
    }
    if (out) {
      // Ring bytes without SP: 2(t-1)/t * 4 * ((4L+2) bsh + 3bs); with SP the backward
      // re-gathers add 2L bsh all_gathers: (10L+4)/(8L+4) of it.
      const double ring_plain = ring_factor("allreduce", t) * 4.0 * static_cast<double>((4 * L + 2) * bsh + 3 * bs);
      fmt::print("{:>15} {:>6} {:>14.0f} {:>14} {:>8} {:>14.2f}   ({:.3f} x the allreduce-only ring "
                 "bytes)\n", "total", "", total_elems, "", "", total_wire / (1 << 20),
                 total_wire / ring_plain);
    }

    // ---- activation memory ----
    // Per layer, measured: one layer's activations plus the layer's input (residual stream).
    const int64_t Nl = model.local_rows(bs);
    const double measured_layer =
        static_cast<double>(nn::architecture(cfg.family).layer_activation_bytes(cfg, t, b, s, sp ? Nl : -1, 0,
                                                                                 model.operand_storage()) +
                            4 * Nl * h);
    const double sbh = static_cast<double>(bsh), as_h = static_cast<double>(a * s) / h;
    // Korthikanti et al. (2-byte activations, dropout masks and dropout outputs included).
    const double paper = sp ? sbh / t * (34 + 5 * as_h) : sbh * (10 + 24.0 / t + 5 * as_h / t);
    // The same terms in fp32 without dropout: replicated 10 -> LN inputs (2 sbh) + QKV and fc
    // inputs (2 sbh) = 4 sbh floats; sharded 24 -> Q,K,V (3) + proj input (1) + fc output (4)
    // + GELU output (4) = 12 sbh/t floats; attention 5as^2b/t -> the softmax only, a s^2 b/t
    // floats. Under sequence parallelism everything is divided by t.
    const double fp32 = 4.0 * (sp ? sbh / t * (16 + as_h) : sbh * (4 + 12.0 / t + as_h / t));
    // Whole model: L layers + the stage output + the head (ln_f output and stats, logits
    // (bs, V/t), losses) + the LayerNorm statistics that the formulas ignore.
    const double Vl = static_cast<double>(model.padded_vocab_local());
    const double extras =
        4.0 * (static_cast<double>(Nl * h) /*stage output*/ + Nl * h + 2.0 * Nl /*ln_f*/ + bs * Vl + bs);
    if (out) {
      fmt::print("activation memory per layer, this rank (MiB): measured {:.3f}, fp32/no-dropout "
                 "formula {:.3f} (ratio {:.4f}), Korthikanti 2-byte formula {:.3f}\n",
                 measured_layer / (1 << 20), fp32 / (1 << 20), measured_layer / fp32, paper / (1 << 20));
      fmt::print("  the difference is the LayerNorm mean/rstd (4 floats per {}token): {:.3f} MiB\n",
                 sp ? "local " : "", (measured_layer - fp32) / (1 << 20));
      fmt::print("activations, whole model (MemoryTracker): {:.3f} MiB = L x {:.3f} + {:.3f} "
                 "(stage output, ln_f, logits bs x V/t = {:.3f}, losses); predicted {:.3f} (ratio "
                 "{:.4f})\n",
                 act_bytes / (1 << 20), measured_layer / (1 << 20), extras / (1 << 20),
                 4.0 * bs * Vl / (1 << 20), (L * fp32 + extras) / (1 << 20),
                 act_bytes / (L * fp32 + extras));
      fmt::print("peak by category this step:");
      for (int c = 0; c < static_cast<int>(MemCategory::kCount); ++c) {
        const auto cat = static_cast<MemCategory>(c);
        fmt::print("  {} {}", mem_category_name(cat), format_bytes(static_cast<double>(tracker.peak(cat))));
      }
      fmt::print("\n");
    }
    TRI_CHECK(std::fabs(measured_layer / fp32 - 1.0) < 0.10,
              "per-layer activations {} bytes differ from the formula {} by more than 10%",
              measured_layer, fp32);
  }
  if (out) {
    const double without = 4.0 * bsh * (4 + 12.0 / t + static_cast<double>(a * s) / (h * t));
    const double with = 4.0 * bsh / t * (16 + static_cast<double>(a * s) / h);
    fmt::print("\nsequence parallelism cuts per-layer activations by {:.2f}x at tp {} (formula: "
               "(4 + 12/t + as/(ht)) / ((16 + as/h)/t)); tp=1 would hold {:.3f} MiB per layer\n",
               without / with, t, 4.0 * bsh * (16 + static_cast<double>(a * s) / h) / (1 << 20));
  }
}

}  // namespace
}  // namespace trident

int main(int argc, char** argv) {
  trident::comm::MpiRuntime mpi(&argc, &argv);
  try {
    trident::kernels::set_num_threads(1);
    trident::run(trident::parse(argc, argv));
  } catch (const std::exception& e) {
    trident::comm::abort_job(e.what(), 1);
  }
  return 0;
}
