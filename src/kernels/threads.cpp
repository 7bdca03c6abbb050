// Thread count shared by the OpenMP kernels and OpenBLAS, set together so neither pool
// oversubscribes the cores the other one is using.
#include <cblas.h>
#include <omp.h>

#include "core/check.h"
#include "kernels/kernels.h"

namespace trident::kernels {

void set_num_threads(int threads) {
  TRI_CHECK(threads >= 1, "thread count must be >= 1, got {}", threads);
  openblas_set_num_threads(threads);
  omp_set_num_threads(threads);
}

int num_threads() { return omp_get_max_threads(); }

}  // namespace trident::kernels
