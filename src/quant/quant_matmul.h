// Linear layers on packed weights (quant/quant_format.h), computed without expanding the matrix:
//   out (N, O) = x (N, I) @ W^T + bias (O; may be null), W the QuantMatrix [out, in].
// fp32: sgemm (kernels::matmul_forward_nt).
// int8: each row of x is quantized on the fly to int8, symmetric per row (s_x = max|x| / 127),
//   and the dot products are exact int32 sums: out = s_x s_o sum_i q_x,i q_o,i (+ bias). With
//   AVX-512 VNNI (vpdpbusd, u8 x s8) x is shifted to u8 (q + 128) and 128 * row_sum is subtracted,
//   so the VNNI and the portable path give the same int32 and bitwise the same output.
// q4: weights expanded to fp32 in registers (s_g q + m_g), multiplied with fp32 x (AVX-512F
//   where the CPU has it; a scalar loop otherwise, differing only in summation order).
// The path is chosen once at run time from the CPU (cpuid); tests force either.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "quant/quant_format.h"

namespace trident::quant {

enum class KernelPath { kAuto, kSimd, kPortable };
bool cpu_has_avx512_vnni();
bool cpu_has_avx512f();
// The path kAuto takes for `format` on this CPU: "avx512-vnni", "avx512f", "portable", "sgemm".
const char* kernel_path_name(Format format);

// Caller-owned buffers for int8's quantized activations, grown as needed.
struct LinearScratch {
  std::vector<int8_t> xq;     // (N, I)
  std::vector<float> xscale;  // (N)
  // When set, quant_linear shows it every input (w, x (N, I), N) before the product: how GPTQ's
  // calibration (infer/gptq_calibrate.h) sees what each layer matrix multiplies.
  std::function<void(const QuantMatrix&, const float*, int64_t)> observe;
  // When set, quant_linear calls it after the product (out (N, O) already holds x W^T + bias):
  // how LoRA adapters are applied without merging them (infer/lora_apply.h).
  std::function<void(const QuantMatrix&, const float*, float*, int64_t)> add_after;
};

void quant_linear(float* out, const float* x, const QuantMatrix& w, const float* bias, int64_t N,
                  LinearScratch& scratch, KernelPath path = KernelPath::kAuto);

// The per-row activation quantization int8 uses (exposed for tests): xq (N, I), scale (N).
void quantize_rows_int8(int8_t* xq, float* scale, const float* x, int64_t N, int64_t I);

}  // namespace trident::quant
