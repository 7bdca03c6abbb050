// Element-wise loops over an array in fixed blocks spread over the OpenMP threads: the block
// size is fixed (not n / threads), so which code path handles an element does not depend on
// the thread count.
#pragma once

#include <cstdint>

namespace trident::kernels {

// fn(begin, end) for consecutive blocks of at most 16K elements covering [0, n).
template <class Fn>
void for_each_block(int64_t n, Fn&& fn) {
  constexpr int64_t kBlock = 1 << 14;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < n; b += kBlock) fn(b, b + kBlock < n ? b + kBlock : n);
}

}  // namespace trident::kernels
