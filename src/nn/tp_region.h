// Megatron's conjugate pairs around a tensor-parallel region, written once for the plain and
// the sequence-parallel path (Korthikanti et al. 2022). A region starts before column-parallel
// layers (their input must be every token row, replicated) and ends after row-parallel ones
// (their outputs are partial sums):
//                    forward                         backward
//   enter   plain:   identity                         allreduce the input gradient
//           sp:      all-gather rows (Nl -> N)        reduce-scatter rows (N -> Nl)
//   exit    plain:   allreduce the partial sums       identity
//           sp:      reduce-scatter rows (N -> Nl)    all-gather rows (Nl -> N)
// With tp size 1 every function is the identity.
#pragma once

#include <cstdint>

#include "kernels/matmul_engine.h"
#include "nn/saved_operand.h"
#include "nn/tensor_parallel.h"

namespace trident::nn {

// x (Nl, C) -> the region's input (N, C): x itself, or gathered into `gathered`.
inline const float* tp_enter(const TpContext& tp, const float* x, float* gathered, int64_t N, int64_t C) {
  if (!tp.sp()) return x;
  tp.gather_rows(x, gathered, N, C);
  return gathered;
}

// A saved matmul operand x (Nl, C) -> the region's input (N, C): x itself, or gathered into
// `gathered` as saved: 16-bit words under bf16/fp16 (the bits the column-parallel products
// round them to anyway, so bitwise an fp32 gather's result at half the bytes), fp32 rows
// otherwise. `gathered` holds N C floats either way.
inline kernels::ActOperand tp_enter(const TpContext& tp, const SavedOperand& x, float* gathered, int64_t N,
                                    int64_t C) {
  if (!tp.sp()) return x.operand();
  if (x.is16()) {
    auto* full = reinterpret_cast<uint16_t*>(gathered);
    tp.gather_rows16(x.bits(), full, N, C);
    return {full, x.storage()};
  }
  return tp_enter(tp, x.operand().f32, gathered, N, C);
}

// d/d(region input) (N, C), partial per rank -> d/d x (Nl, C): summed in place, or
// reduce-scattered into `local`. Returns where the result is.
inline float* tp_enter_backward(const TpContext& tp, float* dfull, float* local, int64_t N, int64_t C) {
  if (!tp.sp()) {
    tp.allreduce_sum(dfull, N * C);
    return dfull;
  }
  tp.reduce_scatter_rows(dfull, local, N, C);
  return local;
}

// Partial sums (N, C) -> the summed output (Nl, C): in place, or reduce-scattered into `out`.
inline float* tp_exit(const TpContext& tp, float* partial, float* out, int64_t N, int64_t C) {
  if (!tp.sp()) {
    tp.allreduce_sum(partial, N * C);
    return partial;
  }
  tp.reduce_scatter_rows(partial, out, N, C);
  return out;
}

// d/d(output) (Nl, C) -> d/d(partial sums) (N, C): itself, or gathered into `full`.
inline const float* tp_exit_backward(const TpContext& tp, const float* dout, float* full, int64_t N,
                                     int64_t C) {
  return tp_enter(tp, dout, full, N, C);
}

}  // namespace trident::nn
