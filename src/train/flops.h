// FLOP accounting for throughput and MFU. Formula (PaLM, Chowdhery et al. 2022, appendix B):
// training FLOPs per token = 6 * N + 12 * L * C * T, with N the parameters that take part in
// matmuls (all weights incl. the tied LM head, excluding the position table) and the second
// term the attention score and value products (counted as non-causal, as PaLM does).
#pragma once

#include <cstdint>

#include "nn/gpt_config.h"

namespace trident::train {

double training_flops_per_token(const nn::GPTConfig& cfg, int64_t seq_len);

// Measured sgemm throughput (FLOP/s) of OpenBLAS's own threading with omp_get_max_threads()
// threads, 1024^3 products: the "peak" MFU is reported against (an honest, achievable ceiling
// on this machine). The training kernels keep OpenBLAS at one thread and split each sgemm over
// the OpenMP threads themselves (kernels/matmul.cpp); the probe restores that setting.
double measure_sgemm_flops(double seconds = 0.3);

}  // namespace trident::train
