// C (fp32) = alpha-free op(A) op(B) + beta C with A, B in bf16 and fp32 accumulation: the
// matmul of mixed precision. Backends, chosen once at construction:
//   * oneDNN's matmul primitive (Debian's libdnnl): AMX tiles where the CPU has them,
//     AVX-512 BF16 dot products (vdpbf16ps) otherwise; primitives are cached per shape;
//   * a fallback for CPUs oneDNN has no bf16 kernel for (and for tests): widen A and B to
//     fp32 and call sgemm. Same contract, exact same inputs, fp32 accumulation.
// Row-major, cblas-like: op(A) is (M, K), op(B) is (K, N), C is (M, N) with leading dims.
// Not thread-safe: each thread (rank) owns its Bf16Gemm.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "kernels/bf16.h"

namespace trident::kernels {

enum class Bf16Backend { kAuto, kOneDnn, kFallback };

class Bf16Gemm {
 public:
  // kAuto: oneDNN when its kernel for this CPU is faster than sgemm (AMX), else the fallback;
  // the choice depends on the CPU only, never on timing, so a run's numbers are repeatable.
  // kOneDnn: any native oneDNN kernel (AMX or AVX-512 BF16); throws when there is none.
  explicit Bf16Gemm(Bf16Backend backend = Bf16Backend::kAuto);
  ~Bf16Gemm();
  Bf16Gemm(const Bf16Gemm&) = delete;
  Bf16Gemm& operator=(const Bf16Gemm&) = delete;

  void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const bf16_t* A, int64_t lda,
            const bf16_t* B, int64_t ldb, float beta, float* C, int64_t ldc);

  Bf16Backend backend() const { return backend_; }
  // "oneDNN brg:avx512_core_amx_bf16" or "fallback: widened to fp32 + sgemm (reason)".
  const std::string& describe() const { return description_; }

 private:
  struct OneDnn;  // engine, stream and the per-shape primitive cache
  Bf16Backend backend_;
  std::string description_;
  std::unique_ptr<OneDnn> dnnl_;
};

}  // namespace trident::kernels
