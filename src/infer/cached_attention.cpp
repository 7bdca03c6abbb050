// Attention against a KV cache (see decode_layer.h): per (row, head) a dot product with every
// cached key, a softmax and a weighted sum of the cached values, in fp32.
#include <algorithm>
#include <cmath>
#include <vector>

#include "infer/decode_layer.h"

namespace trident::infer {

void cached_attention(float* out, const float* q, int64_t q_stride, const float* kcache, const float* vcache,
                      int64_t pos, int64_t n, int64_t NH, int64_t NKV, int64_t HS) {
  const int64_t KVW = NKV * HS, group = NH / NKV;
  const float scale = 1.0f / std::sqrt(static_cast<float>(HS));
#pragma omp parallel
  {
    std::vector<float> p(static_cast<std::size_t>(pos + n));
#pragma omp for collapse(2) schedule(static)
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t h = 0; h < NH; ++h) {
        const float* qh = q + t * q_stride + h * HS;
        const int64_t kvh = h / group, len = pos + t + 1;
        float mx = -INFINITY;
        for (int64_t j = 0; j < len; ++j) {
          const float* k = kcache + j * KVW + kvh * HS;
          float d = 0.0f;
          for (int64_t c = 0; c < HS; ++c) d += qh[c] * k[c];
          p[static_cast<std::size_t>(j)] = d * scale;
          mx = std::max(mx, d * scale);
        }
        float sum = 0.0f;
        for (int64_t j = 0; j < len; ++j) sum += (p[static_cast<std::size_t>(j)] = std::exp(p[static_cast<std::size_t>(j)] - mx));
        const float inv = 1.0f / sum;
        float* o = out + t * NH * HS + h * HS;
        std::fill(o, o + HS, 0.0f);
        for (int64_t j = 0; j < len; ++j) {
          const float w = p[static_cast<std::size_t>(j)] * inv;
          const float* v = vcache + j * KVW + kvh * HS;
          for (int64_t c = 0; c < HS; ++c) o[c] += w * v[c];
        }
      }
    }
  }
}

}  // namespace trident::infer
