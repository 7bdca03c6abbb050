// The local arithmetic of the bf16 gradient sums (Communicator::allreduce_bf16 and
// reduce_scatter_bf16_v): rounding to bf16 for the wire and adding the ranks' bf16 chunks. Kept
// apart from MPI so the order and the rounding are tested directly (tests/unit/bf16_sum_test).
#pragma once

#include <cstdint>

#include "kernels/bf16.h"

namespace trident::comm {

// out[i] = bf16(x[i]), round to nearest even (kernels::float_to_bf16). Scalar: it runs on a
// communicator's worker thread, beside the compute threads' OpenMP teams.
void round_to_bf16(const float* x, int64_t n, kernels::bf16_t* out);
// out[i] = fp32 value of in[i] (exact).
void widen_from_bf16(const kernels::bf16_t* in, int64_t n, float* out);
// `parts` chunks of n values back to back (rank s's at in + s * n): out[i] = bf16 of their fp32
// sum taken in order s = 0, 1, ..., parts - 1 (one rounding to bf16 at the end), so the result
// depends on the values and the rank order only.
void sum_bf16_chunks(const kernels::bf16_t* in, int parts, int64_t n, kernels::bf16_t* out);

}  // namespace trident::comm
