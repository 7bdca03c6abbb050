// A quick sgemm throughput probe (the model FLOPs are nn::training_flops_per_token).
#include "train/flops.h"

#include <cblas.h>
#include <omp.h>

#include <cstddef>
#include <vector>

#include "core/timer.h"

namespace trident::train {

double time_square_sgemm(int n, double seconds,
                         const std::function<void(const float* a, const float* b, float* c)>& product) {
  const std::size_t elems = static_cast<std::size_t>(n) * static_cast<std::size_t>(n);
  std::vector<float> a(elems, 0.5f), b(elems, 0.25f), c(elems);
  product(a.data(), b.data(), c.data());
  Stopwatch sw;
  int calls = 0;
  do {
    product(a.data(), b.data(), c.data());
    ++calls;
  } while (sw.seconds() < seconds);
  return 2.0 * static_cast<double>(n) * n * n * calls / sw.seconds();
}

double measure_sgemm_flops(double seconds) {
  const int n = 1024;
  // OpenBLAS's own threading with as many threads as the OpenMP kernels use.
  const int before = openblas_get_num_threads();
  openblas_set_num_threads(omp_get_max_threads());
  const double flops = time_square_sgemm(n, seconds, [n](const float* a, const float* b, float* c) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
  });
  openblas_set_num_threads(before);
  return flops;
}

}  // namespace trident::train
