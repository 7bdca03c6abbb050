// One training step (forward + backward + grad-norm clipping + AdamW, fp32 or --precision bf16, one process) of
// any preset's model -- GPT-2 or Llama, the family comes from the preset -- in Trident and in
// PyTorch (bench/torch_step.py, a subprocess with the same threads, model, batch and sequence:
// tests/ref/torch_gpt2.py's or tests/ref/torch_llama.py's model), alternated A B A B ... in one
// invocation so both see the same machine load; the median step time of each side gives
// tokens/s and their ratio. Also: Trident's achieved FLOP/s (6N + 12LHT per token) against
// sgemm throughput probed between the rounds (MFU against measured peak), a per-phase profile
// of Trident's step from the kernels' timing hook (kernels/profile.h), and peak memory by
// category.
//
//   build/bench/gpt_vs_torch --preset small --threads 2 --batch 4 --seq 256 --steps 5
//   build/bench/gpt_vs_torch --preset llama-small --threads 2 --batch 4 --seq 256 --steps 3
//   build/bench/gpt_vs_torch --preset gpt2 --precision bf16 --steps 2 --rounds 3
#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/memory.h"
#include "core/rng.h"
#include "core/timer.h"
#include "kernels/kernels.h"
#include "kernels/matmul_engine.h"
#include "kernels/profile.h"
#include "nn/architecture.h"
#include "nn/model.h"
#include "nn/model_config.h"
#include "optim/adamw.h"
#include "optim/grad_clip.h"
#include "train/flops.h"

#include "same_shape_sgemm.h"

using namespace trident;

namespace {

struct Options {
  std::string preset = "small";
  int threads = 2;
  int64_t batch = 4, seq = 256;
  int steps = 5;   // timed steps per round and side
  int rounds = 3;  // A B alternations
  bool torch = true;
  // bf16: Trident's --precision bf16 (every matmul on bf16 operands, fp32 accumulation) against
  // PyTorch's forward and loss under torch.autocast("cpu", dtype=torch.bfloat16).
  kernels::Precision precision = kernels::Precision::kFp32;
  std::string python = "/usr/bin/python3";
  std::string script;  // default: torch_step.py next to this source file's bench/ directory
};

void usage() {
  std::string presets;
  for (const std::string& name : nn::model_preset_names()) presets += (presets.empty() ? "" : "|") + name;
  std::printf(
      "usage: gpt_vs_torch [--preset %s]\n"
      "                    [--threads 2] [--batch 4] [--seq 256] [--steps 5] [--rounds 3] [--no-torch]\n"
      "                    [--precision fp32|bf16]\n"
      "                    [--python /usr/bin/python3] [--script bench/torch_step.py]\n"
      "  (default preset small; a llama-* preset benchmarks the Llama family)\n",
      presets.c_str());
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error("missing value after " + a);
      return argv[++i];
    };
    if (a == "--preset") o.preset = next();
    else if (a == "--threads") o.threads = std::stoi(next());
    else if (a == "--batch") o.batch = std::stoll(next());
    else if (a == "--seq") o.seq = std::stoll(next());
    else if (a == "--steps") o.steps = std::stoi(next());
    else if (a == "--rounds") o.rounds = std::stoi(next());
    else if (a == "--no-torch") o.torch = false;
    else if (a == "--precision") {
      const std::string p = next();
      if (p == "fp32") o.precision = kernels::Precision::kFp32;
      else if (p == "bf16") o.precision = kernels::Precision::kBf16;
      else throw std::runtime_error("--precision takes fp32 or bf16, not " + p);
    }
    else if (a == "--python") o.python = next();
    else if (a == "--script") o.script = next();
    else if (a == "--help" || a == "-h") { usage(); std::exit(0); }
    else throw std::runtime_error("unknown option " + a);
  }
  if (o.threads < 1 || o.batch < 1 || o.seq < 1 || o.steps < 1 || o.rounds < 1) {
    throw std::runtime_error("threads, batch, seq, steps and rounds must be >= 1");
  }
  return o;
}

std::string load_average() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return a + " " + b + " " + c;
}

double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// The PyTorch side: a child process spoken to over two pipes (see bench/torch_step.py).
class TorchProcess {
 public:
  TorchProcess(const Options& o, const nn::ModelConfig& c) {
    int to_child[2], from_child[2];
    if (pipe(to_child) != 0 || pipe(from_child) != 0) throw std::runtime_error("pipe failed");
    std::vector<std::string> args = {o.python, o.script,
                                     "--n-layer", std::to_string(c.n_layer),
                                     "--n-head", std::to_string(c.n_head),
                                     "--n-embd", std::to_string(c.n_embd),
                                     "--n-positions", std::to_string(c.n_positions),
                                     "--vocab-size", std::to_string(c.vocab_size),
                                     "--batch", std::to_string(o.batch),
                                     "--seq", std::to_string(o.seq),
                                     "--threads", std::to_string(o.threads),
                                     "--family", std::string(nn::family_name(c.family))};
    if (o.precision == kernels::Precision::kBf16) args.insert(args.end(), {"--autocast", "bf16"});
    if (c.family == nn::Family::kLlama) {
      const std::vector<std::string> llama = {"--n-kv-head", std::to_string(c.kv_heads()),
                                              "--n-inner", std::to_string(c.mlp_width()),
                                              "--rope-theta", fmt::format("{}", c.rope_theta),
                                              "--norm-eps", fmt::format("{}", c.norm_eps),
                                              "--tie", c.tie_word_embeddings ? "1" : "0"};
      args.insert(args.end(), llama.begin(), llama.end());
    }
    std::fflush(stdout);
    pid_ = fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      dup2(to_child[0], 0);
      dup2(from_child[1], 1);
      close(to_child[0]), close(to_child[1]), close(from_child[0]), close(from_child[1]);
      // torch.set_num_threads sets the intra-op pool; keep the BLAS/OpenMP defaults equal.
      const std::string t = std::to_string(o.threads);
      setenv("OMP_NUM_THREADS", t.c_str(), 1);
      std::vector<char*> argv;
      for (auto& s : args) argv.push_back(s.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      std::perror("execv");
      _exit(127);
    }
    close(to_child[0]);
    close(from_child[1]);
    in_ = fdopen(to_child[1], "w");
    out_ = fdopen(from_child[0], "r");
    ready_ = read_json();
  }
  ~TorchProcess() {
    if (in_) {
      std::fputs("quit\n", in_);
      std::fclose(in_);
    }
    if (out_) std::fclose(out_);
    if (pid_ > 0) waitpid(pid_, nullptr, 0);
  }
  const nlohmann::json& ready() const { return ready_; }
  nlohmann::json run(int steps) {
    std::fprintf(in_, "run %d\n", steps);
    std::fflush(in_);
    return read_json();
  }

 private:
  nlohmann::json read_json() {
    std::string line;
    char buf[65536];
    while (std::fgets(buf, sizeof(buf), out_) != nullptr) {
      line += buf;
      if (!line.empty() && line.back() == '\n') break;
    }
    if (line.empty()) throw std::runtime_error("the PyTorch process exited (see its stderr)");
    return nlohmann::json::parse(line);
  }
  pid_t pid_ = -1;
  FILE* in_ = nullptr;
  FILE* out_ = nullptr;
  nlohmann::json ready_;
};

// Per-phase sums of the kernel calls of the profiled steps.
class PhaseProfile : public kernels::ProfileSink {
 public:
  explicit PhaseProfile(const nn::ModelConfig& c)
      : family_(c.family), C_(c.n_embd), Q_(static_cast<int64_t>(c.n_head) * c.head_size()),
        KV_(static_cast<int64_t>(c.kv_heads()) * c.head_size()), I_(c.mlp_width()),
        V_(c.padded_vocab()) {}
  void record(const kernels::KernelCall& k) override {
    using kernels::KernelOp;
    std::string name;
    const char* dir = k.backward ? " bwd" : " fwd";
    switch (k.op) {
      case KernelOp::kMatmul:
        if (k.d1 == C_ && k.d2 == 3 * C_) name = "matmul attn.c_attn (qkv)";
        else if (k.d1 == C_ && k.d2 == C_) name = "matmul attn.c_proj";
        else if (k.d1 == C_ && k.d2 == 4 * C_) name = "matmul mlp.c_fc";
        else if (k.d1 == 4 * C_ && k.d2 == C_) name = "matmul mlp.c_proj";
        else name = "matmul other";
        name += dir;
        break;
      case KernelOp::kMatmulNt:
        // GPT-2 uses this kernel only for the LM head; Llama's nn.Linear [out, in] weights use
        // it for every projection, told apart by (in, out) = (d1, d2).
        name = (family_ == nn::Family::kLlama ? llama_projection(k.d1, k.d2) : "matmul lm_head") + dir;
        break;
      case KernelOp::kAttention: name = std::string("attention (softmax, QK^T, AV)") + dir; break;
      case KernelOp::kRope: name = std::string("rope") + dir; break;
      case KernelOp::kCrossEntropy: name = "cross-entropy (fused fwd+bwd)"; break;
      case KernelOp::kAdamW: name = "optimizer (AdamW)"; break;
      case KernelOp::kSumSquares: name = "grad norm (sum of squares)"; break;
      default: name = kernels::kernel_op_name(k.op); break;
    }
    seconds_[name] += k.seconds;
    total_ += k.seconds;
    same_shapes_.record(k);
  }
  void add(const std::string& name, double s) {
    seconds_[name] += s;
    total_ += s;
  }
  const std::map<std::string, double>& seconds() const { return seconds_; }
  double total() const { return total_; }
  const bench::SameShapeSgemm& same_shapes() const { return same_shapes_; }

 private:
  std::string llama_projection(int64_t in, int64_t out) const {
    if (out == V_) return "matmul lm_head";
    // The fused projections (nn/column_parallel_linear.h): q|k|v and gate|up, one product each.
    if (in == C_ && out == Q_ + 2 * KV_) return "matmul q_proj|k_proj|v_proj (fused)";
    if (in == C_ && out == 2 * I_) return "matmul gate_proj|up_proj (fused)";
    if (in == Q_ && out == C_) return "matmul o_proj";
    // Separate products: the fallback where a run's weights are not adjacent in memory.
    if (in == C_ && out == Q_) return "matmul q_proj";
    if (in == C_ && out == KV_) return "matmul k_proj + v_proj";
    if (in == C_ && out == I_) return "matmul gate_proj + up_proj";
    if (in == I_ && out == C_) return "matmul down_proj";
    return "matmul other";
  }
  nn::Family family_;
  int64_t C_, Q_, KV_, I_, V_;
  std::map<std::string, double> seconds_;
  double total_ = 0.0;
  bench::SameShapeSgemm same_shapes_;
};

}  // namespace

int main(int argc, char** argv) {
  Options o;
  try {
    o = parse(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gpt_vs_torch: %s\n", e.what());
    usage();
    return 2;
  }
  if (o.script.empty()) o.script = std::string(TRIDENT_BENCH_DIR) + "/torch_step.py";
  try {
    const nn::ModelConfig cfg = nn::model_preset(o.preset);
    const int64_t B = o.batch, T = o.seq, N = B * T;
    kernels::set_num_threads(o.threads);
    std::printf("# gpt_vs_torch: preset %s (%s)\n", o.preset.c_str(), cfg.describe().c_str());
    const bool bf16 = o.precision == kernels::Precision::kBf16;
    std::printf("# batch %ld x seq %ld = %ld tokens/step, threads %d, %s; %d rounds x %d steps "
                "per side, alternated\n", B, T, N, o.threads,
                bf16 ? "bf16 matmuls (PyTorch: torch.autocast bf16); sgemm figures stay fp32" : "fp32",
                o.rounds, o.steps);
    std::printf("# load average at start: %s (nproc %ld)\n", load_average().c_str(),
                sysconf(_SC_NPROCESSORS_ONLN));

    // ---- Trident ----
    MemoryTracker tracker;
    nn::Model model(cfg);
    model.set_precision(o.precision);
    model.allocate(tracker);
    nn::ParameterSet& ps = model.params();
    ps.initialize(1234);
    nn::ModelActivations acts = model.make_activations(tracker, B, T);
    optim::AdamW adam(ps, tracker, {});
    std::vector<int32_t> ids(static_cast<std::size_t>(N)), targets(ids.size());
    for (int64_t i = 0; i < N; ++i) {
      ids[static_cast<std::size_t>(i)] = static_cast<int32_t>(uniform_at(7, 0, static_cast<uint64_t>(i)) * static_cast<float>(cfg.vocab_size)) % static_cast<int32_t>(cfg.vocab_size);
      targets[static_cast<std::size_t>(i)] = static_cast<int32_t>(uniform_at(7, 1, static_cast<uint64_t>(i)) * static_cast<float>(cfg.vocab_size)) % static_cast<int32_t>(cfg.vocab_size);
    }
    const float lr = 3e-4f, grad_clip = 1.0f;
    double last_loss = 0.0;
    // Times of the step's pieces outside the kernels (only filled when profiling).
    double zero_s = 0.0;
    auto trident_step = [&](bool profile) {
      Stopwatch sw;
      ps.zero_grads();
      if (profile) zero_s += sw.seconds();
      last_loss = model.forward_backward(acts, ids.data(), targets.data(), B, T,
                                         1.0f / static_cast<float>(N)) / static_cast<double>(N);
      const double norm = std::sqrt(kernels::sum_squares(ps.grads().data(), ps.total_numel()));
      adam.step(ps.values().data(), ps.grads().data(), lr, optim::clip_scale(norm, grad_clip));
    };
    trident_step(false);  // warm-up: page faults, BLAS buffers, attention scratch
    tracker.reset_peaks();

    std::unique_ptr<TorchProcess> torch;
    if (o.torch) {
      torch = std::make_unique<TorchProcess>(o, cfg);
      std::printf("# PyTorch %s, %d threads, %ld parameters (Trident: %ld logical, %ld allocated "
                  "incl. vocabulary padding)\n",
                  torch->ready().value("torch", std::string("?")).c_str(),
                  torch->ready().value("threads", 0),
                  torch->ready().value("params", int64_t{0}), cfg.num_parameters(),
                  ps.total_numel());
    }

    // sgemm through Trident's matmul path (kernels/matmul.cpp: oneDNN's threaded sgemm), the
    // same 1024^3 product as train::measure_sgemm_flops's OpenBLAS-threaded probe.
    auto trident_sgemm_flops = [](double seconds) {
      return train::time_square_sgemm(1024, seconds, [](const float* a, const float* b, float* c) {
        kernels::matmul_forward(c, a, b, nullptr, 1024, 1024, 1024);
      });
    };
    // oneDNN's own sgemm on the same 1024^3 product: the machine's peak is whichever library
    // is faster, so Trident's matmuls are set against the better of the two probes.
    auto onednn_sgemm_flops = [](double seconds) {
      return train::time_square_sgemm(1024, seconds, [](const float* a, const float* b, float* c) {
        dnnl_sgemm('N', 'N', 1024, 1024, 1024, 1.0f, a, 1024, b, 1024, 0.0f, c, 1024);
      });
    };
    std::vector<double> tri_s, torch_s, sgemm, sgemm_ours, sgemm_dnnl;
    std::printf("# round  sgemm GFLOP/s  trident ms/step  torch ms/step  load\n");
    for (int r = 0; r < o.rounds; ++r) {
      sgemm.push_back(train::measure_sgemm_flops(0.3));
      sgemm_ours.push_back(trident_sgemm_flops(0.3));
      sgemm_dnnl.push_back(onednn_sgemm_flops(0.3));
      std::vector<double> rt, tt;
      for (int s = 0; s < o.steps; ++s) {
        Stopwatch sw;
        trident_step(false);
        rt.push_back(sw.seconds());
      }
      if (torch) {
        const nlohmann::json reply = torch->run(o.steps);
        for (double t : reply.at("step_s")) tt.push_back(t);
      }
      tri_s.insert(tri_s.end(), rt.begin(), rt.end());
      torch_s.insert(torch_s.end(), tt.begin(), tt.end());
      std::printf("  %5d  %13.1f  %15.1f  %13.1f  %s\n", r, sgemm.back() / 1e9, median(rt) * 1e3,
                  torch ? median(tt) * 1e3 : NAN, load_average().c_str());
      std::fflush(stdout);
    }
    sgemm.push_back(train::measure_sgemm_flops(0.3));

    // ---- figures ----
    const double tri_step = median(tri_s);
    const double tri_tps = static_cast<double>(N) / tri_step;
    const double flops_token = nn::training_flops_per_token(cfg, T);
    // The declared matmul parameters N of the formula (a tied head once; no position table or
    // biases or norm gains): FLOPs/token less the attention term, over 6.
    const double attention_flops_token = 12.0 * cfg.n_layer * cfg.n_head * cfg.head_size() * static_cast<double>(T);
    const double matmul_params = (flops_token - attention_flops_token) / 6.0;
    const double tri_flops = flops_token * tri_tps;
    const double peak_openblas = median(sgemm);
    const double peak_onednn = median(sgemm_dnnl);
    const double peak = std::max(peak_openblas, peak_onednn);
    std::printf("\n# FLOPs per token = 6*N + 12*L*H*T (PaLM; N = %.0f parameters in matmuls incl. "
                "the head, excl. position table, biases and norms; H = heads x head size; "
                "attention counted non-causal) = %.4g\n",
                matmul_params, flops_token);
    std::printf("sgemm (1024^3, %d threads)   %8.1f GFLOP/s (OpenBLAS, median of %zu probes, min %.1f, max %.1f)\n",
                o.threads, peak_openblas / 1e9, sgemm.size(),
                *std::min_element(sgemm.begin(), sgemm.end()) / 1e9,
                *std::max_element(sgemm.begin(), sgemm.end()) / 1e9);
    std::printf("sgemm (1024^3, %d threads)   %8.1f GFLOP/s (oneDNN, median of %zu probes, min %.1f, max %.1f)\n",
                o.threads, peak_onednn / 1e9, sgemm_dnnl.size(),
                *std::min_element(sgemm_dnnl.begin(), sgemm_dnnl.end()) / 1e9,
                *std::max_element(sgemm_dnnl.begin(), sgemm_dnnl.end()) / 1e9);
    std::printf("sgemm peak (the faster)     %8.1f GFLOP/s (%s): the \"sgemm\" of the ratios below\n",
                peak / 1e9, peak_openblas >= peak_onednn ? "OpenBLAS" : "oneDNN");
    std::printf("sgemm via Trident's matmul  %8.1f GFLOP/s (median of %zu)\n",
                median(sgemm_ours) / 1e9, sgemm_ours.size());
    std::printf("trident                     %8.1f tokens/s  (%.1f ms/step, median of %zu)  loss %.4f\n",
                tri_tps, tri_step * 1e3, tri_s.size(), last_loss);
    if (torch) {
      const double torch_step = median(torch_s);
      const double torch_tps = static_cast<double>(N) / torch_step;
      std::printf("pytorch                     %8.1f tokens/s  (%.1f ms/step, median of %zu)\n",
                  torch_tps, torch_step * 1e3, torch_s.size());
      std::printf("ratio trident / pytorch     %8.3f x\n", tri_tps / torch_tps);
      std::printf("pytorch FLOP/s              %8.1f GFLOP/s = %.1f%% of measured sgemm\n",
                  flops_token * torch_tps / 1e9, 100.0 * flops_token * torch_tps / peak);
    }
    std::printf("trident FLOP/s              %8.1f GFLOP/s\n", tri_flops / 1e9);
    std::printf("trident MFU vs sgemm        %8.1f %%\n", 100.0 * tri_flops / peak);

    // ---- profile: a few more steps with the kernels' timing hook on ----
    PhaseProfile prof(cfg);
    const int prof_steps = std::max(2, o.steps);
    kernels::set_profile_sink(&prof);
    Stopwatch psw;
    for (int s = 0; s < prof_steps; ++s) trident_step(true);
    const double prof_total = psw.seconds();
    kernels::set_profile_sink(nullptr);
    prof.add("zero gradients", zero_s);
    std::printf("\n# profile of Trident's step (%d profiled steps, %.1f ms/step wall)\n", prof_steps,
                prof_total / prof_steps * 1e3);
    std::vector<std::pair<double, std::string>> rows;
    for (const auto& [name, s] : prof.seconds()) rows.emplace_back(s, name);
    std::sort(rows.rbegin(), rows.rend());
    double matmul = 0.0;
    for (const auto& [s, name] : rows) {
      if (name.starts_with("matmul")) matmul += s;
      std::printf("  %-34s %8.2f ms  %5.1f%%\n", name.c_str(), s / prof_steps * 1e3,
                  100.0 * s / prof_total);
    }
    const double other = prof_total - prof.total();
    std::printf("  %-34s %8.2f ms  %5.1f%%\n", "other (untimed glue, memsets)", other / prof_steps * 1e3,
                100.0 * other / prof_total);
    const double mm_flops = 6.0 * matmul_params * static_cast<double>(N);
    std::printf("  all matmuls: %.1f%% of the step, at %.1f GFLOP/s (6N per token) = %.1f%% of sgemm\n",
                100.0 * matmul / prof_total, mm_flops / (matmul / prof_steps) / 1e9,
                100.0 * mm_flops / (matmul / prof_steps) / peak);
    // The BLAS's own speed on the same products (bench/same_shape_sgemm.h): what any caller
    // gets for these shapes, against which Trident's matmul time shows its own overhead.
    double blas = 0.0;
    for (const bench::SgemmLibrary lib : {bench::SgemmLibrary::kOpenBlas, bench::SgemmLibrary::kOneDnn}) {
      const double s = prof.same_shapes().seconds(lib, o.threads, 5);
      std::printf("  the same products through %s sgemm (%d threads, its own threading): %.2f ms/step "
                  "= %.1f GFLOP/s = %.1f%% of the 1024^3 peak\n", bench::name_of(lib), o.threads,
                  s / prof_steps * 1e3, mm_flops / (s / prof_steps) / 1e9,
                  100.0 * mm_flops / (s / prof_steps) / peak);
      blas = blas == 0.0 ? s : std::min(blas, s);
    }
    std::printf("  Trident's matmuls against the faster same-shape sgemm: %.1f%% (time of sgemm / time of Trident)\n",
                100.0 * blas / matmul);

    // ---- memory ----
    std::printf("\n# memory peaks by category (one step)\n%s", tracker.report().c_str());
    const std::size_t p16 = tracker.peak(MemCategory::kParameters) +
                            tracker.peak(MemCategory::kGradients) +
                            tracker.peak(MemCategory::kOptimizerState);
    std::printf("parameters+gradients+AdamW = %zu bytes = %.4f bytes x %ld allocated parameter "
                "elements\n", p16, static_cast<double>(p16) / static_cast<double>(ps.total_numel()),
                ps.total_numel());
    std::printf("activations: %zu bytes allocated, analytic formula (docs/memory.md) %ld bytes\n",
                tracker.peak(MemCategory::kActivations), model.activation_bytes(B, T));
    std::printf("# load average at end: %s\n", load_average().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gpt_vs_torch: %s\n", e.what());
    return 1;
  }
  return 0;
}
