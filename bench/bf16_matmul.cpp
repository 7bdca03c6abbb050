// bf16 GEMM (kernels/matmul_bf16.h: oneDNN, the own AVX-512 BF16 kernel, or the fp32
// fallback) against OpenBLAS sgemm on the training matmuls of a transformer layer and of the
// tied LM head, alternated in one run so both see the same machine load; prints GFLOP/s of
// each (medians) and the ratio bf16 / fp32 per shape (the median of the per-repetition ratios:
// each pair of runs is back to back, so a load spike hits both) and overall.
// Usage: bf16_matmul [preset small|gpt2] [tokens N] [backend auto|onednn|avx512|fallback] [vocab V]
// (threads: OMP_NUM_THREADS, for both sides; the OpenBLAS kernel is the one OpenBLAS picks
// for this CPU (printed), OPENBLAS_CORETYPE=SkylakeX forces its AVX-512 sgemm where the
// CPU is newer than this OpenBLAS; ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 with backend onednn
// measures oneDNN's AVX-512 BF16 kernel on a CPU that also has AMX; vocab 0 skips the LM head)
#include <cblas.h>  // openblas_get_corename
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/timer.h"
#include "kernels/bf16.h"
#include "kernels/kernels.h"
#include "kernels/matmul_bf16.h"

namespace k = trident::kernels;

namespace {

struct Shape {
  const char* what;
  bool ta, tb;
  int64_t M, N, K;
};

}  // namespace

int main(int argc, char** argv) {
  const std::string preset = argc > 1 ? argv[1] : "small";
  const int64_t T = argc > 2 ? std::atoll(argv[2]) : 1024;
  const int64_t C = preset == "gpt2" ? 768 : 384;
  k::set_num_threads(omp_get_max_threads());
  const std::string backend = argc > 3 ? argv[3] : "auto";
  const int64_t V = argc > 4 ? std::atoll(argv[4]) : 50304;
  k::Bf16Gemm bf16(backend == "onednn"     ? k::Bf16Backend::kOneDnn
                   : backend == "avx512"   ? k::Bf16Backend::kAvx512Bf16
                   : backend == "fallback" ? k::Bf16Backend::kFallback
                                           : k::Bf16Backend::kAuto);
  std::printf("bf16 backend: %s; sgemm: OpenBLAS %s; %d thread(s); %s shapes (C=%lld, %lld tokens, vocab %lld)\n",
              bf16.describe().c_str(), openblas_get_corename(), omp_get_max_threads(), preset.c_str(),
              static_cast<long long>(C), static_cast<long long>(T), static_cast<long long>(V));
  // Forward (x @ W), input gradient (dy @ W^T) and weight gradient (x^T @ dy) of c_attn, c_fc, c_proj.
  std::vector<Shape> shapes = {
      {"c_attn fwd", false, false, T, 3 * C, C}, {"c_attn dx", false, true, T, C, 3 * C},
      {"c_attn dW", true, false, C, 3 * C, T},   {"c_fc fwd", false, false, T, 4 * C, C},
      {"c_fc dx", false, true, T, C, 4 * C},     {"c_fc dW", true, false, C, 4 * C, T},
      {"c_proj fwd", false, false, T, C, 4 * C}, {"c_proj dx", false, true, T, 4 * C, C},
      {"c_proj dW", true, false, 4 * C, C, T},
  };
  // The tied LM head: logits (x @ wte^T), dx (dlogits @ wte) and dwte (dlogits^T @ x).
  if (V > 0) {
    shapes.push_back({"lm_head fwd", false, true, T, V, C});
    shapes.push_back({"lm_head dx", false, false, T, C, V});
    shapes.push_back({"lm_head dW", true, false, V, C, T});
  }
  std::printf("%-11s %6s %6s %6s | %10s %10s | %6s\n", "matmul", "M", "N", "K", "fp32 GF/s", "bf16 GF/s", "ratio");
  std::vector<double> all_ratios;
  double total_fp32 = 0, total_bf16 = 0, flops_all = 0;
  for (const Shape& s : shapes) {
    const int64_t a_rows = s.ta ? s.K : s.M, a_cols = s.ta ? s.M : s.K;
    const int64_t b_rows = s.tb ? s.N : s.K, b_cols = s.tb ? s.K : s.N;
    std::vector<float> A(static_cast<size_t>(a_rows * a_cols), 0.25f), B(static_cast<size_t>(b_rows * b_cols), 0.5f),
        Cf(static_cast<size_t>(s.M * s.N));
    std::vector<k::bf16_t> Ah(A.size()), Bh(B.size());
    k::convert_to_bf16(Ah.data(), A.data(), static_cast<int64_t>(A.size()));
    k::convert_to_bf16(Bh.data(), B.data(), static_cast<int64_t>(B.size()));
    // fp32: the training kernels themselves (kernels/matmul.cpp: C split over the OpenMP
    // threads, one single-threaded sgemm each), in the form that has this layout. The weight
    // gradient form accumulates there (beta 1), so the bf16 side does too.
    const float beta = s.ta ? 1.0f : 0.0f;
    auto run_fp32 = [&] {
      if (s.ta) {  // dweight (M, N) += inp (K, M)^T @ dout (K, N)
        k::matmul_backward(nullptr, Cf.data(), nullptr, B.data(), A.data(), nullptr, s.K, s.M, s.N);
      } else if (s.tb) {  // out (M, N) = inp (M, K) @ table (N, K)^T
        k::matmul_forward_nt(Cf.data(), A.data(), B.data(), s.M, s.K, s.N);
      } else {  // out (M, N) = inp (M, K) @ weight (K, N)
        k::matmul_forward(Cf.data(), A.data(), B.data(), nullptr, s.M, s.K, s.N);
      }
    };
    auto run_bf16 = [&] {
      bf16.gemm(s.ta, s.tb, s.M, s.N, s.K, Ah.data(), a_cols, Bh.data(), b_cols, beta, Cf.data(), s.N);
    };
    run_fp32();
    run_bf16();
    const double flops = 2.0 * static_cast<double>(s.M * s.N * s.K);
    const int reps = flops > 2e10 ? 7 : 15;  // the LM head shapes take ~0.5 s per call
    std::vector<double> tf, tb, ratio;
    for (int rep = 0; rep < reps; ++rep) {  // alternated: both see the same load
      trident::Stopwatch a;
      run_fp32();
      tf.push_back(a.seconds());
      trident::Stopwatch b;
      run_bf16();
      tb.push_back(b.seconds());
      ratio.push_back(tf.back() / tb.back());
    }
    const auto median = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      return v[v.size() / 2];
    };
    const double f = flops / median(tf) / 1e9, h = flops / median(tb) / 1e9, r = median(ratio);
    total_fp32 += median(tf);
    total_bf16 += median(tb);
    flops_all += flops;
    all_ratios.push_back(r);
    std::printf("%-11s %6lld %6lld %6lld | %10.1f %10.1f | %5.2fx\n", s.what, static_cast<long long>(s.M),
                static_cast<long long>(s.N), static_cast<long long>(s.K), f, h, r);
  }
  std::sort(all_ratios.begin(), all_ratios.end());
  std::printf("%-11s %20s | %10.1f %10.1f | %5.2fx  (median times summed; per-shape ratios from %.2fx to %.2fx)\n",
              "all", "", flops_all / total_fp32 / 1e9, flops_all / total_bf16 / 1e9, total_fp32 / total_bf16,
              all_ratios.front(), all_ratios.back());
  return 0;
}
