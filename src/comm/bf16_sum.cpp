// bf16 rounding and rank-ordered fp32 sums for the bf16 gradient collectives (see bf16_sum.h).
#include "comm/bf16_sum.h"

namespace trident::comm {

void round_to_bf16(const float* x, int64_t n, kernels::bf16_t* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = kernels::float_to_bf16(x[i]);
}

void widen_from_bf16(const kernels::bf16_t* in, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = kernels::bf16_to_float(in[i]);
}

void sum_bf16_chunks(const kernels::bf16_t* in, int parts, int64_t n, kernels::bf16_t* out) {
  for (int64_t i = 0; i < n; ++i) {
    float acc = 0.0f;
    for (int s = 0; s < parts; ++s) acc += kernels::bf16_to_float(in[static_cast<int64_t>(s) * n + i]);
    out[i] = kernels::float_to_bf16(acc);
  }
}

}  // namespace trident::comm
