// Trident's own bf16 GEMM for CPUs with AVX-512 BF16 (vdpbf16ps) but no AMX, where oneDNN 2.6's
// kernel is slower than fp32 sgemm (Zen 4/5, Cooper Lake). Same contract as Bf16Gemm::gemm:
// row-major C (M, N) = op(A) (M, K) op(B) (K, N) + beta C, beta 0 or 1, bf16 inputs, fp32
// accumulation and output.
//
// Numerics: every bf16 x bf16 product is exact in fp32; each C element is one fp32 sum over k
// in a fixed order (pairs of k per vdpbf16ps, slices of 768 k added into C in turn), so
// the result depends on neither the thread count nor the data, only on the shape. vdpbf16ps
// treats subnormal inputs and results as zero (DAZ/FTZ), which float_to_bf16 inputs never are.
//
// Threading: C is cut into one block per OpenMP thread along its larger dimension, as the fp32
// matmuls do (kernels/matmul.cpp); each thread packs its own panels.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/bf16.h"

namespace trident::kernels {

// One thread's packed panels of A and B, kept by the caller (Bf16Gemm) between calls so a
// training step does not allocate them per matmul.
struct Bf16PackBuffers {
  std::vector<uint32_t> a, b;
};

// Requires cpu_has_avx512_bf16(); sizes already checked (M, N, K > 0, beta 0 or 1).
void gemm_bf16_avx512(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const bf16_t* A, int64_t lda,
                      const bf16_t* B, int64_t ldb, float beta, float* C, int64_t ldc,
                      std::vector<Bf16PackBuffers>& buffers);

}  // namespace trident::kernels
