// The sgemm throughput MFU is reported against. The model's FLOPs per token come from its
// architecture's declaration: nn::training_flops_per_token (nn/architecture.h).
#pragma once

namespace trident::train {

// Measured sgemm throughput (FLOP/s) of OpenBLAS's own threading with omp_get_max_threads()
// threads, 1024^3 products: the "peak" MFU is reported against (an honest, achievable ceiling
// on this machine). The training kernels keep OpenBLAS at one thread and split each sgemm over
// the OpenMP threads themselves (kernels/matmul.cpp); the probe restores that setting.
double measure_sgemm_flops(double seconds = 0.3);

}  // namespace trident::train
