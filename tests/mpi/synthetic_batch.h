// A deterministic synthetic global batch for the engine equivalence tests: token (step, row, t)
// from a hash, target a fixed function of the token (so the loss goes down). Any split of the
// rows over ranks or micro-batches sees the same global batch.
#pragma once

#include <cstdint>
#include <string>

#include "core/rng.h"
#include "parallel/engine.h"

namespace trident::test {

inline parallel::BatchFn synthetic_batch(int step, int vocab, int64_t seq_len) {
  return [step, vocab, seq_len](int64_t row0, int64_t rows, int32_t* ids, int32_t* targets) {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t t = 0; t < seq_len; ++t) {
        const uint64_t h = fnv1a64(std::to_string(step) + ":" + std::to_string(row0 + r) + ":" + std::to_string(t));
        const auto id = static_cast<int32_t>(h % static_cast<uint64_t>(vocab));
        ids[r * seq_len + t] = id;
        targets[r * seq_len + t] = static_cast<int32_t>((id * 7 + 3) % vocab);
      }
    }
  };
}

}  // namespace trident::test
