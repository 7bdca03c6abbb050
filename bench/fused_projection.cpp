// The fused column-parallel projections (nn/column_parallel_linear.h) against the separate
// products they replace, in one run: q|k|v and gate|up of llama-small (C 384, 6 query heads,
// 2 key/value heads of 64, SwiGLU width 1024) at N = 1024 tokens, forward + backward. The
// separate path is the layer's own fallback (a weight pointer moved out of the run), so both
// sides are the same code the model runs. Rounds alternate the two; times are medians.
//   build/bench/fused_projection [--threads 1] [--reps 15]
// With one thread the times are process CPU time (the machine is shared: wall time would
// mostly measure the neighbours).
#include <fmt/format.h>
#include <time.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/memory.h"
#include "core/timer.h"
#include "kernels/kernels.h"
#include "kernels/matmul_engine.h"
#include "nn/column_parallel_linear.h"
#include "nn/param_decl.h"
#include "nn/parameters.h"

namespace nn = trident::nn;

namespace {

double cpu_ms() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Case {
  const char* name;
  std::vector<int64_t> widths;
};

}  // namespace

int main(int argc, char** argv) {
  int threads = 1, reps = 15;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--threads" && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else if (a == "--reps" && i + 1 < argc) {
      reps = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: fused_projection [--threads N] [--reps R]\n");
      return 2;
    }
  }
  trident::kernels::set_num_threads(threads);
  const bool cpu = threads == 1;
  const int64_t N = 1024, C = 384;
  std::printf("# fused vs separate column-parallel projections, N %ld, C %ld, %d thread(s), %s, median of %d\n", N, C,
              threads, cpu ? "process CPU time" : "wall time", reps);
  std::printf("# %-10s %10s %12s %12s %8s %14s %14s\n", "run", "widths", "separate ms", "fused ms", "ratio",
              "separate GF/s", "fused GF/s");
  // The sgemm probe (1024^3) timed the same way, interleaved with the cases' rounds.
  std::vector<float> pa(1024 * 1024, 0.5f), pb(1024 * 1024, 0.25f), pc(1024 * 1024);
  trident::kernels::MatmulEngine probe_mm;
  std::vector<double> probe;
  auto run_probe = [&] {
    const double t0 = cpu ? cpu_ms() : 0.0;
    trident::Stopwatch sw;
    probe_mm.forward_nt(pc.data(), pa.data(), pb.data(), 1024, 1024, 1024);
    probe.push_back(cpu ? cpu_ms() - t0 : sw.seconds() * 1e3);
  };
  run_probe();
  probe.clear();
  std::vector<double> fused_gf;
  for (const Case& c : {Case{"q|k|v", {384, 128, 128}}, Case{"gate|up", {1024, 1024}}}) {
    trident::MemoryTracker tracker;
    nn::ParameterSet ps;
    ps.begin_group("layer");
    std::vector<nn::ParamDecl> decls;
    for (std::size_t i = 0; i < c.widths.size(); ++i) {
      decls.push_back(nn::ParamDecl{.name = fmt::format("w{}", i), .shape = {c.widths[i], C}, .init_std = 0.02f});
    }
    for (const nn::ParamDecl& d : decls) ps.add(nn::shard_for_tp(d, nn::ModelConfig{}, 0, 1));
    std::vector<const nn::ParamDecl*> ptrs;
    for (const nn::ParamDecl& d : decls) ptrs.push_back(&d);
    ps.allocate(tracker);
    ps.initialize(1);
    const nn::ColumnParallelLinear run(ps, ptrs);
    const int64_t W = run.out_width();
    std::vector<float> x(static_cast<std::size_t>(N * C), 0.5f), dout(static_cast<std::size_t>(N * W), 0.25f);
    std::vector<float> out(static_cast<std::size_t>(N * W)), dx(static_cast<std::size_t>(N * C));
    std::vector<float> work(static_cast<std::size_t>(run.work_floats(N)));
    // The separate path: the last weight's values and gradient moved out of the run.
    const int last = run.id(run.size() - 1);
    std::vector<float> moved_v(ps.data(last), ps.data(last) + ps.info(last).numel);
    std::vector<float> moved_g(static_cast<std::size_t>(ps.info(last).numel), 0.0f);
    float* run_v = ps.data(last);
    float* run_g = ps.grad(last);
    trident::kernels::MatmulEngine mm;
    auto step = [&](bool fused) {
      ps.set_data_ptr(last, fused ? run_v : moved_v.data());
      ps.set_grad_ptr(last, fused ? run_g : moved_g.data());
      const double t0 = cpu ? cpu_ms() : 0.0;
      trident::Stopwatch sw;
      run.forward(mm, ps, out.data(), x.data(), N, work.data());
      run.backward(mm, ps, dx.data(), dout.data(), x.data(), N, work.data());
      return cpu ? cpu_ms() - t0 : sw.seconds() * 1e3;
    };
    step(true), step(false);  // warm-up
    std::vector<double> ts, tf;
    for (int r = 0; r < reps; ++r) {
      ts.push_back(step(false));
      tf.push_back(step(true));
      if (r % 5 == 0) run_probe();
    }
    const double s = median(ts), f = median(tf);
    const double flops = 6.0 * static_cast<double>(N * C * W);  // forward + both backward products
    std::string widths;
    for (int64_t w : c.widths) {
      if (!widths.empty()) widths += '+';
      widths += std::to_string(w);
    }
    std::printf("  %-10s %10s %12.2f %12.2f %7.2fx %14.1f %14.1f\n", c.name, widths.c_str(), s, f, s / f,
                flops / s / 1e6, flops / f / 1e6);
    fused_gf.push_back(flops / f / 1e6);
  }
  const double sg = 2.0 * 1024 * 1024 * 1024 / median(probe) / 1e6;
  std::printf("sgemm 1024^3 (same run, median of %zu) %.1f GFLOP/s; fused q|k|v %.1f%%, fused gate|up %.1f%% of it\n",
              probe.size(), sg, 100.0 * fused_gf[0] / sg, 100.0 * fused_gf[1] / sg);
  return 0;
}
