// Whether this CPU's fp32 products give a row of the result the same bits whatever the number
// of rows in the call: a layout test's premise. dp and pp hand each rank fewer rows of the same
// products (half the batch, one micro-batch), so where rows are invariant a row's activations
// are bitwise the single process's and only the weight gradients' sums reorder; where they are
// not, the activations themselves carry fp32 noise, as tp's do, and a bf16 operand near a
// rounding boundary can flip from the first step. Measured: invariant on AVX-512 CPUs; not with
// OpenBLAS's and oneDNN's AVX2 kernels (a few % of the elements differ at 128 rows against 256).
//
// Prints {"row_invariant": true|false, "differing": n, "checked": m} for the products a
// transformer block and the LM head run (kernels::matmul_forward, its backward's dinp,
// matmul_forward_nt), one thread, as the layout tests run each rank.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/kernels.h"

namespace {

using Floats = std::vector<float>;

Floats random_floats(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  Floats v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// out (rows, OC) for the first `rows` rows of x (N, C).
using Product = void (*)(float* out, const float* x, const float* w, int64_t rows, int64_t C, int64_t OC);

void forward(float* out, const float* x, const float* w, int64_t rows, int64_t C, int64_t OC) {
  trident::kernels::matmul_forward(out, x, w, nullptr, rows, C, OC);
}
void forward_nt(float* out, const float* x, const float* w, int64_t rows, int64_t C, int64_t OC) {
  trident::kernels::matmul_forward_nt(out, x, w, rows, C, OC);
}
// dinp (rows, OC) = dout (rows, C) @ weight (OC, C)^T: the backward's product, with the roles
// of C and OC swapped so that its output is again (rows, OC).
void backward_dinp(float* out, const float* x, const float* w, int64_t rows, int64_t C, int64_t OC) {
  trident::kernels::matmul_backward(out, nullptr, nullptr, x, nullptr, w, rows, OC, C);
}

}  // namespace

int main() {
  trident::kernels::set_num_threads(1);
  constexpr int64_t kRows = 256;
  int64_t differing = 0, checked = 0;
  for (Product product : {forward, forward_nt, backward_dinp}) {
    for (int64_t C : {32, 128}) {
      for (int64_t OC : {96, 1024}) {
        const Floats x = random_floats(static_cast<size_t>(kRows * C), 1);
        const Floats w = random_floats(static_cast<size_t>(C * OC), 2);
        Floats whole(static_cast<size_t>(kRows * OC)), part(whole.size());
        product(whole.data(), x.data(), w.data(), kRows, C, OC);
        for (int64_t rows : {kRows / 2, int64_t{7}}) {
          product(part.data(), x.data(), w.data(), rows, C, OC);
          for (int64_t i = 0; i < rows * OC; ++i) differing += std::memcmp(&whole[i], &part[i], sizeof(float)) != 0;
          checked += rows * OC;
        }
      }
    }
  }
  std::printf("{\"row_invariant\": %s, \"differing\": %lld, \"checked\": %lld}\n", differing == 0 ? "true" : "false",
              static_cast<long long>(differing), static_cast<long long>(checked));
  return 0;
}
