// The matmuls of a profiled step replayed through a plain sgemm, shape for shape: OpenBLAS's
// (its own threading, as a user calling the BLAS gets it) or oneDNN's (threaded over OpenMP),
// so a step's matmul time can be set against what each library itself achieves on the same
// products. A 1024^3 probe is the BLAS's best case;
// a model's products (K = 384 rows, a 50k-wide head) run slower in any caller, and only this
// comparison separates Trident's own overhead (splitting, packing, glue) from the BLAS's
// shape efficiency.
//
// The shapes come from the kernels' timing hook (kernels/profile.h). A backward call is counted
// as both of its products (input and weight gradients): true of every matmul of a plain
// training step, where every layer's input gradient is needed.
#pragma once

#include <cblas.h>
#include <dnnl.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <tuple>
#include <vector>

#include "core/timer.h"
#include "kernels/profile.h"

namespace trident::bench {

enum class SgemmLibrary { kOpenBlas, kOneDnn };

inline const char* name_of(SgemmLibrary lib) { return lib == SgemmLibrary::kOpenBlas ? "OpenBLAS" : "oneDNN"; }

class SameShapeSgemm {
 public:
  // Notes one matmul call of the profiled steps; other kernels are ignored.
  void record(const kernels::KernelCall& k) {
    if (k.op != kernels::KernelOp::kMatmul && k.op != kernels::KernelOp::kMatmulNt) return;
    ++calls_[{static_cast<int>(k.op), k.backward, k.d0, k.d1, k.d2}];
  }

  // Seconds the recorded calls take through `lib`'s sgemm with `threads` threads (the median
  // of `reps` timings of each distinct shape, times its call count).
  double seconds(SgemmLibrary lib, int threads, int reps) const {
    const int before = openblas_get_num_threads();
    const int omp_before = omp_get_max_threads();
    if (lib == SgemmLibrary::kOpenBlas) {
      openblas_set_num_threads(threads);
    } else {
      omp_set_num_threads(threads);
    }
    double total = 0.0;
    for (const auto& [key, count] : calls_) {
      const auto [op, backward, d0, d1, d2] = key;
      const std::vector<Product> products = products_of(op == static_cast<int>(kernels::KernelOp::kMatmulNt), backward, d0, d1, d2);
      std::vector<double> t;
      run(lib, products);  // warm-up: page faults, thread pool
      for (int r = 0; r < reps; ++r) {
        Stopwatch sw;
        run(lib, products);
        t.push_back(sw.seconds());
      }
      std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
      total += t[t.size() / 2] * count;
    }
    openblas_set_num_threads(before);
    omp_set_num_threads(omp_before);
    return total;
  }

 private:
  struct Product {
    CBLAS_TRANSPOSE ta, tb;
    int64_t M, N, K;
  };
  // The products one call computes (kernels/matmul.cpp): the Conv1D linear (weight [C, OC]):
  // out = x W; dx = dout W^T, dW = x^T dout. The [out, in] linear and the LM head (table
  // [V, C]): out = x T^T; dx = dout T, dT = dout^T x.
  static std::vector<Product> products_of(bool nt, bool backward, int64_t n, int64_t c, int64_t o) {
    if (nt) {
      if (!backward) return {{CblasNoTrans, CblasTrans, n, o, c}};
      return {{CblasNoTrans, CblasNoTrans, n, c, o}, {CblasTrans, CblasNoTrans, o, c, n}};
    }
    if (!backward) return {{CblasNoTrans, CblasNoTrans, n, o, c}};
    return {{CblasNoTrans, CblasTrans, n, c, o}, {CblasTrans, CblasNoTrans, c, o, n}};
  }
  void run(SgemmLibrary lib, const std::vector<Product>& ps) const {
    for (const Product& p : ps) {
      const auto need = [](std::vector<float>& v, int64_t n) {
        if (static_cast<int64_t>(v.size()) < n) v.assign(static_cast<std::size_t>(n), 0.01f);
      };
      need(a_, p.M * p.K);
      need(b_, p.K * p.N);
      need(c_, p.M * p.N);
      const int64_t lda = p.ta == CblasNoTrans ? p.K : p.M;
      const int64_t ldb = p.tb == CblasNoTrans ? p.N : p.K;
      if (lib == SgemmLibrary::kOneDnn) {
        dnnl_sgemm(p.ta == CblasNoTrans ? 'N' : 'T', p.tb == CblasNoTrans ? 'N' : 'T', p.M, p.N, p.K,
                   1.0f, a_.data(), lda, b_.data(), ldb, 1.0f, c_.data(), p.N);
        continue;
      }
      cblas_sgemm(CblasRowMajor, p.ta, p.tb, static_cast<blasint>(p.M), static_cast<blasint>(p.N),
                  static_cast<blasint>(p.K), 1.0f, a_.data(), static_cast<blasint>(lda), b_.data(),
                  static_cast<blasint>(ldb), 1.0f, c_.data(), static_cast<blasint>(p.N));
    }
  }
  std::map<std::tuple<int, bool, int64_t, int64_t, int64_t>, int64_t> calls_;
  mutable std::vector<float> a_, b_, c_;
};

}  // namespace trident::bench
