// Copying a block of columns between row-major matrices: how a fused projection's packed rows
// ([q | k | v], [gate | up]) are assembled from, or split into, separate products when its
// weights are not adjacent in memory (nn/column_parallel_linear.h), and where a block receives
// its LoRA adapter's product (nn/lora_adapter.h).
#include <cstring>

#include "core/check.h"
#include "kernels/kernels.h"

namespace trident::kernels {

void copy_columns(float* dst, int64_t dst_stride, const float* src, int64_t src_stride, int64_t N,
                  int64_t width) {
  TRI_CHECK(N >= 0 && width >= 0 && dst_stride >= width && src_stride >= width,
            "copy_columns: bad sizes N={} width={} strides {} {}", N, width, dst_stride, src_stride);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    std::memcpy(dst + n * dst_stride, src + n * src_stride, static_cast<std::size_t>(width) * sizeof(float));
  }
}

void accumulate_columns(float* dst, int64_t dst_stride, const float* src, int64_t src_stride, int64_t N,
                        int64_t width) {
  TRI_CHECK(N >= 0 && width >= 0 && dst_stride >= width && src_stride >= width,
            "accumulate_columns: bad sizes N={} width={} strides {} {}", N, width, dst_stride, src_stride);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    float* d = dst + n * dst_stride;
    const float* s = src + n * src_stride;
    for (int64_t j = 0; j < width; ++j) d[j] += s[j];
  }
}

}  // namespace trident::kernels
