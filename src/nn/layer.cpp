// The scratch buffers shared by a model's layers, embedding and head.
#include "nn/layer.h"

namespace trident::nn {

SharedScratch::SharedScratch(MemoryTracker& tracker, int64_t N, int64_t C, int64_t layer_floats,
                             int64_t sp_local_rows) {
  const auto W = MemCategory::kWorkspace;
  const auto n = static_cast<std::size_t>(N), c = static_cast<std::size_t>(C);
  dln = FloatBuffer(tracker, W, n * c);
  layer = FloatBuffer(tracker, W, static_cast<std::size_t>(layer_floats));
  if (sp_local_rows >= 0) {
    gathered = FloatBuffer(tracker, W, n * c);
    full = FloatBuffer(tracker, W, n * c);
    dln_local = FloatBuffer(tracker, W, static_cast<std::size_t>(sp_local_rows) * c);
    norm_grads = FloatBuffer(tracker, W, 4 * c);
  }
}

int64_t SharedScratch::floats(int64_t N, int64_t C, int64_t layer_floats, int64_t sp_local_rows) {
  int64_t f = N * C + layer_floats;
  if (sp_local_rows >= 0) f += 2 * N * C + sp_local_rows * C + 4 * C;
  return f;
}

}  // namespace trident::nn
