// Per-kernel timings at the GPT-2 benchmark shape (B=4, T=256, C=384, NH=6, V=50257 padded
// to 50304) so regressions in one op show up without running the model. Times are medians.
#include <time.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/timer.h"
#include "kernels/kernels.h"

namespace k = trident::kernels;

namespace {

// Process CPU time: on a shared, oversubscribed machine wall time mostly measures the
// neighbours; with one thread, CPU time is the kernel's own work.
bool g_cpu_time = false;

double now_ms() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

double median_ms(int reps, const std::function<void()>& f) {
  f();  // warm-up: page faults, BLAS buffers, per-thread scratch
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    if (g_cpu_time) {
      const double t0 = now_ms();
      f();
      t.push_back(now_ms() - t0);
      continue;
    }
    trident::Stopwatch sw;
    f();
    t.push_back(sw.seconds() * 1e3);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

std::vector<float> randn(size_t n, float scale) {
  std::mt19937 gen(1);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(gen);
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  g_cpu_time = argc > 2 && std::string(argv[2]) == "cpu";
  k::set_num_threads(threads);
  const int64_t B = 4, T = 256, C = 384, NH = 6, V = 50257, Vp = 50304, N = B * T;
  std::printf("%s, ", g_cpu_time ? "process CPU time" : "wall time");
  std::printf("threads %d, B=%ld T=%ld C=%ld NH=%ld V=%ld (Vp %ld)\n", threads, B, T, C, NH, V, Vp);

  auto qkv = randn(static_cast<size_t>(N * 3 * C), 1.0f);
  std::vector<float> out(static_cast<size_t>(N * C)), att(static_cast<size_t>(B * NH * T * T));
  std::vector<float> dqkv(qkv.size());
  auto dout = randn(static_cast<size_t>(N * C), 1.0f);
  std::printf("%-28s %8.2f ms\n", "attention_forward",
              median_ms(10, [&] { k::attention_forward(out.data(), att.data(), qkv.data(), B, T, C, NH); }));
  std::printf("%-28s %8.2f ms\n", "attention_backward",
              median_ms(10, [&] { k::attention_backward(dqkv.data(), dout.data(), qkv.data(), att.data(), B, T, C, NH); }));

  const auto logits0 = randn(static_cast<size_t>(N * Vp), 2.0f);
  auto logits = logits0;
  std::vector<float> losses(static_cast<size_t>(N));
  std::vector<int32_t> targets(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; ++n) targets[static_cast<size_t>(n)] = static_cast<int32_t>((n * 7919) % V);
  std::printf("%-28s %8.2f ms\n", "crossentropy (fwd+bwd)", median_ms(10, [&] {
                std::copy(logits0.begin(), logits0.end(), logits.begin());
                k::crossentropy_softmax_forward_backward(losses.data(), logits.data(), targets.data(), N, V, Vp, 1.0f / N);
              }));
  std::printf("%-28s %8.2f ms  (the copy alone, subtract it)\n", "  logits copy", median_ms(10, [&] {
                std::copy(logits0.begin(), logits0.end(), logits.begin());
              }));

  auto x = randn(static_cast<size_t>(N * C), 1.0f);
  auto w = randn(static_cast<size_t>(C), 1.0f);
  auto b = randn(static_cast<size_t>(C), 1.0f);
  std::vector<float> mean(static_cast<size_t>(N)), rstd(static_cast<size_t>(N)), dx(x.size()), dw(w.size()), db(b.size());
  std::printf("%-28s %8.2f ms\n", "layernorm_forward", median_ms(20, [&] {
                k::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C); }));
  std::printf("%-28s %8.2f ms\n", "layernorm_backward", median_ms(20, [&] {
                k::layernorm_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), mean.data(), rstd.data(), N, C); }));

  auto h = randn(static_cast<size_t>(N * 4 * C), 1.0f);
  std::vector<float> hg(h.size()), dh = randn(h.size(), 1.0f);
  std::printf("%-28s %8.2f ms\n", "gelu_forward (N x 4C)", median_ms(20, [&] { k::gelu_forward(hg.data(), h.data(), N * 4 * C); }));
  std::printf("%-28s %8.2f ms\n", "gelu_backward (N x 4C)", median_ms(20, [&] { k::gelu_backward(hg.data(), h.data(), dh.data(), N * 4 * C); }));

  auto W = randn(static_cast<size_t>(C * 4 * C), 0.02f);
  std::vector<float> dW(W.size()), bias(static_cast<size_t>(4 * C)), dbias(bias.size());
  std::printf("%-28s %8.2f ms\n", "matmul_forward (C -> 4C)", median_ms(10, [&] {
                k::matmul_forward(hg.data(), x.data(), W.data(), bias.data(), N, C, 4 * C); }));
  std::printf("%-28s %8.2f ms\n", "matmul_backward (C -> 4C)", median_ms(10, [&] {
                k::matmul_backward(dx.data(), dW.data(), dbias.data(), dh.data(), x.data(), W.data(), N, C, 4 * C); }));

  const int64_t nparams = 30'000'000;  // ~ the 6-layer 384-wide model with its 50304 x 384 wte
  auto p = randn(static_cast<size_t>(nparams), 0.02f), g = randn(static_cast<size_t>(nparams), 0.01f);
  std::vector<float> m(p.size()), v(p.size());
  int64_t step = 0;
  std::printf("%-28s %8.2f ms\n", "adamw_update (30M)", median_ms(5, [&] {
                k::adamw_update(p.data(), g.data(), m.data(), v.data(), nparams, 6e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, ++step, 1.0f); }));
  std::printf("%-28s %8.2f ms\n", "sum_squares (30M)", median_ms(5, [&] { volatile double s = k::sum_squares(g.data(), nparams); (void)s; }));
  return 0;
}
