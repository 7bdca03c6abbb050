// W += s B A (see lora_merge.h).
#include "nn/lora_merge.h"

#include "nn/lora.h"

namespace trident::nn {

void merge_lora(const ParamDecl& base, float scale, int rank, float* w, const float* a, const float* b) {
  const int64_t in = lora_in_width(base), out = lora_out_width(base);
#pragma omp parallel for schedule(static)
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t i = 0; i < in; ++i) {
      double d = 0.0;
      for (int k = 0; k < rank; ++k) d += static_cast<double>(b[o * rank + k]) * a[k * in + i];
      float& x = base.in_out ? w[i * out + o] : w[o * in + i];
      x = static_cast<float>(x + scale * d);
    }
  }
}

}  // namespace trident::nn
