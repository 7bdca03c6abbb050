// The sgemm throughput MFU is reported against. The model's FLOPs per token come from its
// architecture's declaration: nn::training_flops_per_token (nn/architecture.h).
#pragma once

#include <functional>

namespace trident::train {

// FLOP/s of `product`, an n^3 sgemm C = A B given the three n x n buffers (A = 0.5, B = 0.25):
// one warm-up call (thread pool start, page faults), then whole calls until `seconds` have
// passed. The loop every sgemm probe uses, whichever library it calls.
double time_square_sgemm(int n, double seconds,
                         const std::function<void(const float* a, const float* b, float* c)>& product);

// Measured sgemm throughput (FLOP/s) of OpenBLAS's own threading with omp_get_max_threads()
// threads, 1024^3 products: the "peak" MFU is reported against (an honest, achievable ceiling
// on this machine). The training kernels keep OpenBLAS at one thread (they hand threaded
// products to oneDNN's sgemm, kernels/matmul.cpp); the probe restores that setting.
double measure_sgemm_flops(double seconds = 0.3);

}  // namespace trident::train
