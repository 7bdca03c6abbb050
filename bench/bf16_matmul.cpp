// bf16 GEMM (kernels/matmul_bf16.h: oneDNN, or the fp32 fallback) against OpenBLAS sgemm on
// the training matmuls of a transformer layer, alternated in one run so both see the same
// machine load; prints GFLOP/s of each and the ratio bf16 / fp32 per shape and overall.
// Usage: bf16_matmul [preset small|gpt2] [tokens N] [backend auto|onednn|fallback]
// (threads: OMP_NUM_THREADS; ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 with backend onednn measures
// the AVX-512 BF16 kernel on a CPU that also has AMX)
#include <cblas.h>
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
  k::Bf16Gemm bf16(backend == "onednn"     ? k::Bf16Backend::kOneDnn
                   : backend == "fallback" ? k::Bf16Backend::kFallback
                                           : k::Bf16Backend::kAuto);
  std::printf("bf16 backend: %s; %d thread(s); %s shapes (C=%lld, %lld tokens)\n", bf16.describe().c_str(),
              omp_get_max_threads(), preset.c_str(), static_cast<long long>(C), static_cast<long long>(T));
  // Forward (x @ W), input gradient (dy @ W^T) and weight gradient (x^T @ dy) of c_attn, c_fc, c_proj.
  const std::vector<Shape> shapes = {
      {"c_attn fwd", false, false, T, 3 * C, C}, {"c_attn dx", false, true, T, C, 3 * C},
      {"c_attn dW", true, false, C, 3 * C, T},   {"c_fc fwd", false, false, T, 4 * C, C},
      {"c_fc dx", false, true, T, C, 4 * C},     {"c_fc dW", true, false, C, 4 * C, T},
      {"c_proj fwd", false, false, T, C, 4 * C}, {"c_proj dx", false, true, T, 4 * C, C},
      {"c_proj dW", true, false, 4 * C, C, T},
  };
  std::printf("%-11s %6s %6s %6s | %10s %10s | %6s\n", "matmul", "M", "N", "K", "fp32 GF/s", "bf16 GF/s", "ratio");
  double total_fp32 = 0, total_bf16 = 0, flops_all = 0;
  for (const Shape& s : shapes) {
    const int64_t a_rows = s.ta ? s.K : s.M, a_cols = s.ta ? s.M : s.K;
    const int64_t b_rows = s.tb ? s.N : s.K, b_cols = s.tb ? s.K : s.N;
    std::vector<float> A(static_cast<size_t>(a_rows * a_cols), 0.25f), B(static_cast<size_t>(b_rows * b_cols), 0.5f),
        Cf(static_cast<size_t>(s.M * s.N));
    std::vector<k::bf16_t> Ah(A.size()), Bh(B.size());
    k::convert_to_bf16(Ah.data(), A.data(), static_cast<int64_t>(A.size()));
    k::convert_to_bf16(Bh.data(), B.data(), static_cast<int64_t>(B.size()));
    auto run_fp32 = [&] {
      cblas_sgemm(CblasRowMajor, s.ta ? CblasTrans : CblasNoTrans, s.tb ? CblasTrans : CblasNoTrans,
                  static_cast<blasint>(s.M), static_cast<blasint>(s.N), static_cast<blasint>(s.K), 1.0f, A.data(),
                  static_cast<blasint>(a_cols), B.data(), static_cast<blasint>(b_cols), 0.0f, Cf.data(),
                  static_cast<blasint>(s.N));
    };
    auto run_bf16 = [&] {
      bf16.gemm(s.ta, s.tb, s.M, s.N, s.K, Ah.data(), a_cols, Bh.data(), b_cols, 0.0f, Cf.data(), s.N);
    };
    // sgemm above runs with OpenBLAS's own threads (the same ceiling MFU uses).
    openblas_set_num_threads(omp_get_max_threads());
    run_fp32();
    run_bf16();
    std::vector<double> tf, tb;
    for (int rep = 0; rep < 15; ++rep) {  // alternated: both see the same load
      trident::Stopwatch a;
      run_fp32();
      tf.push_back(a.seconds());
      trident::Stopwatch b;
      run_bf16();
      tb.push_back(b.seconds());
    }
    std::sort(tf.begin(), tf.end());
    std::sort(tb.begin(), tb.end());
    const double flops = 2.0 * static_cast<double>(s.M * s.N * s.K);
    const double f = flops / tf[tf.size() / 2] / 1e9, h = flops / tb[tb.size() / 2] / 1e9;
    total_fp32 += tf[tf.size() / 2];
    total_bf16 += tb[tb.size() / 2];
    flops_all += flops;
    std::printf("%-11s %6lld %6lld %6lld | %10.1f %10.1f | %5.2fx\n", s.what, static_cast<long long>(s.M),
                static_cast<long long>(s.N), static_cast<long long>(s.K), f, h, h / f);
  }
  std::printf("%-11s %20s | %10.1f %10.1f | %5.2fx  (median times summed)\n", "all", "", flops_all / total_fp32 / 1e9,
              flops_all / total_bf16 / 1e9, total_fp32 / total_bf16);
  return 0;
}
