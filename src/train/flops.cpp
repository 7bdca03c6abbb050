// A quick sgemm throughput probe (the model FLOPs are nn::training_flops_per_token).
#include "train/flops.h"

#include <cblas.h>
#include <omp.h>

#include <vector>

#include "core/timer.h"

namespace trident::train {

double measure_sgemm_flops(double seconds) {
  const int n = 1024;
  // OpenBLAS's own threading with as many threads as the OpenMP kernels use (the training
  // kernels split sgemm over OpenMP threads themselves and keep OpenBLAS at one thread).
  const int before = openblas_get_num_threads();
  openblas_set_num_threads(omp_get_max_threads());
  std::vector<float> a(static_cast<std::size_t>(n) * n, 0.5f), b(a.size(), 0.25f), c(a.size());
  // One warm-up call (thread pool start, page faults), then time whole calls.
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n,
              0.0f, c.data(), n);
  Stopwatch sw;
  int calls = 0;
  do {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(),
                n, 0.0f, c.data(), n);
    ++calls;
  } while (sw.seconds() < seconds);
  const double flops = 2.0 * n * n * n * calls / sw.seconds();
  openblas_set_num_threads(before);
  return flops;
}

}  // namespace trident::train
