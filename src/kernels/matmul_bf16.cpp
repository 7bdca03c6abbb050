// bf16 GEMM through oneDNN or the fp32 fallback; see matmul_bf16.h.
#include "kernels/matmul_bf16.h"

#include <cblas.h>

#include <dnnl.hpp>
#include <map>
#include <tuple>
#include <vector>

#include "core/check.h"

namespace trident::kernels {

struct Bf16Gemm::OneDnn {
  using Key = std::tuple<bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool>;
  struct Entry {
    dnnl::matmul::primitive_desc pd;
    dnnl::matmul prim;
  };
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  std::map<Key, Entry> cache;

  // A row-major (rows, cols) view with leading dimension ld, read transposed when `trans`.
  static dnnl::memory::desc view(int64_t rows, int64_t cols, int64_t ld, bool trans, dnnl::memory::data_type t) {
    // op(X) is (rows, cols); X itself is stored row-major with leading dimension ld.
    return trans ? dnnl::memory::desc({rows, cols}, t, dnnl::memory::dims{1, ld})
                 : dnnl::memory::desc({rows, cols}, t, dnnl::memory::dims{ld, 1});
  }

  Entry& get(const Key& key) {
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
    const auto [ta, tb, M, N, K, lda, ldb, ldc, accumulate] = key;
    using dt = dnnl::memory::data_type;
    const dnnl::memory::desc a = view(M, K, lda, ta, dt::bf16), b = view(K, N, ldb, tb, dt::bf16),
                             c({M, N}, dt::f32, dnnl::memory::dims{ldc, 1});
    dnnl::primitive_attr attr;
    if (accumulate) {
      dnnl::post_ops ops;
      ops.append_sum(1.0f);
      attr.set_post_ops(ops);
    }
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), attr, engine);
    return cache.emplace(key, Entry{pd, dnnl::matmul(pd)}).first->second;
  }
};

Bf16Gemm::Bf16Gemm(Bf16Backend backend) : backend_(Bf16Backend::kFallback) {
  std::string why;
  if (backend == Bf16Backend::kAuto || backend == Bf16Backend::kOneDnn) {
    try {
      auto d = std::make_unique<OneDnn>();
      const std::string impl = d->get({false, false, 64, 64, 64, 64, 64, 64, false}).pd.impl_info_str();
      // kAuto takes oneDNN only where it beats sgemm: its AMX kernel (bench/bf16_matmul: 3.7x
      // OpenBLAS fp32 on one Sapphire Rapids core). Its AVX-512 BF16 kernel ran at 0.68x of
      // sgemm there (oneDNN 2.6), and its reference kernel is far slower still; the own
      // kernel below serves those CPUs. kOneDnn takes any non-reference kernel.
      const bool usable = impl.find("ref") == std::string::npos &&
                          (backend == Bf16Backend::kOneDnn || impl.find("amx") != std::string::npos);
      if (usable) {
        dnnl_ = std::move(d);
        backend_ = Bf16Backend::kOneDnn;
        description_ = "oneDNN " + impl;
      } else {
        why = "oneDNN's kernel here is " + impl + ", slower than sgemm";
      }
    } catch (const dnnl::error& e) {
      why = std::string("oneDNN: ") + e.what();
    }
    TRI_CHECK(backend_ == Bf16Backend::kOneDnn || backend == Bf16Backend::kAuto,
              "the oneDNN bf16 matmul is not available here: {}", why);
  }
  if (backend_ == Bf16Backend::kFallback &&
      (backend == Bf16Backend::kAuto || backend == Bf16Backend::kAvx512Bf16)) {
    if (cpu_has_avx512_bf16()) {
      backend_ = Bf16Backend::kAvx512Bf16;
      description_ = "own AVX-512 BF16 kernel (vdpbf16ps)";
    } else {
      why += std::string(why.empty() ? "" : "; ") + "no AVX-512 BF16 instructions on this CPU";
    }
    TRI_CHECK(backend_ == Bf16Backend::kAvx512Bf16 || backend == Bf16Backend::kAuto,
              "the AVX-512 BF16 kernel needs a CPU with avx512_bf16 (lscpu shows it); use the automatic backend");
  }
  if (backend_ == Bf16Backend::kFallback) {
    description_ = "fallback: bf16 widened to fp32 + sgemm" + (why.empty() ? std::string() : " (" + why + ")");
  }
}

Bf16Gemm::~Bf16Gemm() = default;

void Bf16Gemm::gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const bf16_t* A, int64_t lda,
                    const bf16_t* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  TRI_CHECK(M >= 0 && N >= 0 && K >= 0, "bf16 gemm: bad sizes M={} N={} K={}", M, N, K);
  TRI_CHECK(beta == 0.0f || beta == 1.0f, "bf16 gemm: beta must be 0 (overwrite) or 1 (accumulate), got {}", beta);
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (beta == 0.0f) {
      for (int64_t m = 0; m < M; ++m) std::fill(C + m * ldc, C + m * ldc + N, 0.0f);
    }
    return;
  }
  if (backend_ == Bf16Backend::kOneDnn) {
    auto& e = dnnl_->get({trans_a, trans_b, M, N, K, lda, ldb, ldc, beta == 1.0f});
    dnnl::memory a(e.pd.src_desc(), dnnl_->engine, const_cast<bf16_t*>(A));
    dnnl::memory b(e.pd.weights_desc(), dnnl_->engine, const_cast<bf16_t*>(B));
    dnnl::memory c(e.pd.dst_desc(), dnnl_->engine, C);
    e.prim.execute(dnnl_->stream, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}});
    dnnl_->stream.wait();
    return;
  }
  if (backend_ == Bf16Backend::kAvx512Bf16) {
    gemm_bf16_avx512(trans_a, trans_b, M, N, K, A, lda, B, ldb, beta, C, ldc, pack_);
    return;
  }
  // Fallback: the stored matrices widened to fp32 (rows x ld each), then sgemm.
  const int64_t a_rows = trans_a ? K : M, b_rows = trans_b ? N : K;
  std::vector<float> a(static_cast<size_t>(a_rows * lda)), b(static_cast<size_t>(b_rows * ldb));
  convert_from_bf16(a.data(), A, a_rows * lda);
  convert_from_bf16(b.data(), B, b_rows * ldb);
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<blasint>(M), static_cast<blasint>(N), static_cast<blasint>(K), 1.0f, a.data(),
              static_cast<blasint>(lda), b.data(), static_cast<blasint>(ldb), beta, C, static_cast<blasint>(ldc));
}

}  // namespace trident::kernels
