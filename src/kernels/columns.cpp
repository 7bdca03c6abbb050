// Packing three column blocks into fused rows and back (Llama's separate q/k/v projections
// feed the fused-row attention kernel).
#include <cstring>

#include "core/check.h"
#include "kernels/kernels.h"

namespace trident::kernels {

void pack_columns3(float* out, const float* a, int64_t wa, const float* b, int64_t wb, const float* c,
                   int64_t wc, int64_t N) {
  TRI_CHECK(N >= 0 && wa >= 0 && wb >= 0 && wc >= 0, "pack_columns3: bad sizes");
  const int64_t w = wa + wb + wc;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    float* row = out + n * w;
    std::memcpy(row, a + n * wa, static_cast<std::size_t>(wa) * sizeof(float));
    std::memcpy(row + wa, b + n * wb, static_cast<std::size_t>(wb) * sizeof(float));
    std::memcpy(row + wa + wb, c + n * wc, static_cast<std::size_t>(wc) * sizeof(float));
  }
}

void unpack_columns3(float* a, int64_t wa, float* b, int64_t wb, float* c, int64_t wc, const float* in,
                     int64_t N) {
  TRI_CHECK(N >= 0 && wa >= 0 && wb >= 0 && wc >= 0, "unpack_columns3: bad sizes");
  const int64_t w = wa + wb + wc;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* row = in + n * w;
    std::memcpy(a + n * wa, row, static_cast<std::size_t>(wa) * sizeof(float));
    std::memcpy(b + n * wb, row + wa, static_cast<std::size_t>(wb) * sizeof(float));
    std::memcpy(c + n * wc, row + wa + wb, static_cast<std::size_t>(wc) * sizeof(float));
  }
}

}  // namespace trident::kernels
