// C (fp32) = alpha-free op(A) op(B) + beta C with A, B in bf16 and fp32 accumulation: the
// matmul of mixed precision. Backends, chosen once at construction from the CPU's features:
//   * oneDNN's matmul primitive (Debian's libdnnl) where it has AMX tiles; primitives are
//     cached per shape;
//   * Trident's own AVX-512 BF16 kernel (vdpbf16ps, gemm_bf16_avx512.h) where the CPU has
//     AVX-512 BF16 but no AMX (Zen 4/5, Cooper Lake): oneDNN 2.6's kernel for those CPUs is
//     slower than fp32 sgemm;
//   * a fallback for CPUs without bf16 instructions (and for tests): widen A and B to fp32 and
//     call sgemm. Same contract, exact same inputs, fp32 accumulation.
// Row-major, cblas-like: op(A) is (M, K), op(B) is (K, N), C is (M, N) with leading dims.
// Not thread-safe: each thread (rank) owns its Bf16Gemm.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/bf16.h"
#include "kernels/gemm_bf16_avx512.h"

namespace trident::kernels {

enum class Bf16Backend { kAuto, kOneDnn, kAvx512Bf16, kFallback };

class Bf16Gemm {
 public:
  // kAuto: oneDNN where it has AMX, else the own AVX-512 BF16 kernel where the CPU has the
  // instructions, else the fallback; the choice depends on the CPU only, never on timing, so a
  // run's numbers are repeatable. The other values force one backend (tests, benchmarks):
  // kOneDnn takes any native oneDNN kernel (AMX or AVX-512 BF16) and kAvx512Bf16 the own
  // kernel; each throws where the CPU cannot run it.
  explicit Bf16Gemm(Bf16Backend backend = Bf16Backend::kAuto);
  ~Bf16Gemm();
  Bf16Gemm(const Bf16Gemm&) = delete;
  Bf16Gemm& operator=(const Bf16Gemm&) = delete;

  void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const bf16_t* A, int64_t lda,
            const bf16_t* B, int64_t ldb, float beta, float* C, int64_t ldc);

  Bf16Backend backend() const { return backend_; }
  // "oneDNN brg:avx512_core_amx_bf16", "own AVX-512 BF16 kernel ..." or
  // "fallback: widened to fp32 + sgemm (reason)".
  const std::string& describe() const { return description_; }

 private:
  struct OneDnn;  // engine, stream and the per-shape primitive cache
  Bf16Backend backend_;
  std::string description_;
  std::unique_ptr<OneDnn> dnnl_;
  std::vector<Bf16PackBuffers> pack_;  // the own kernel's per-thread panels, reused across calls
};

}  // namespace trident::kernels
