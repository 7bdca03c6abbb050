// Thread count of the OpenMP kernels. OpenBLAS is held at one thread: matmul.cpp splits each
// sgemm over the OpenMP threads itself, so only one thread pool ever competes for the cores.
#include <cblas.h>
#include <omp.h>

#include "core/check.h"
#include "kernels/kernels.h"

namespace trident::kernels {

void set_num_threads(int threads) {
  TRI_CHECK(threads >= 1, "thread count must be >= 1, got {}", threads);
  openblas_set_num_threads(1);
  omp_set_num_threads(threads);
}

int num_threads() { return omp_get_max_threads(); }

}  // namespace trident::kernels
