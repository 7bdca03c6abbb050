// AdamW on a flat fp32 range, matching torch.optim.AdamW (PyTorch 1.13, CPU, foreach=False)
// bit for bit, plus the double-precision sum of squares used for the global gradient norm.
//
// Exact agreement needs PyTorch's rounding order, including where its vectorised CPU kernels
// use a fused multiply-add (add_ with alpha, addcmul_) and where they do not; the compiler
// must not contract the remaining a * b + c into FMAs, hence fp-contract=off for this file.
#pragma GCC optimize("fp-contract=off")

#include <immintrin.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <vector>

#include "core/check.h"
#include "kernels/kernels.h"
#include "kernels/profile.h"

namespace trident::kernels {
namespace {

// A hyperparameter given as float, widened to the double a Python user would have written
// (0.9f -> 0.9, not 0.899999976...): PyTorch computes 1 - beta1, 1 - lr * wd and the bias
// corrections in double from the decimal, and those roundings are what we must reproduce.
// The shortest decimal that round-trips the float is exactly that decimal.
double as_decimal(float x) {
  char buf[32];
  const auto printed = std::to_chars(buf, buf + sizeof(buf), x);
  double value = static_cast<double>(x);
  if (printed.ec == std::errc()) std::from_chars(buf, printed.ptr, value);
  return value;
}

struct AdamScalars {
  float decay, b1, one_minus_b1, b2, one_minus_b2, neg_step_size, bc2_sqrt, eps, grad_scale;
};

// One vector width's operations, so a single loop body (adamw_lanes) serves every width.
#if defined(__AVX512F__)
struct Lanes {
  using V = __m512;
  static constexpr int64_t kWidth = 16;
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V x) { _mm512_storeu_ps(p, x); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V div(V a, V b) { return _mm512_div_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  // _mm512_sqrt_ps trips GCC 12's -Wmaybe-uninitialized (its _mm512_undefined_ps
  // pass-through); the all-lanes masked form computes the same thing without it.
  static V sqrt(V x) { return _mm512_maskz_sqrt_ps(static_cast<__mmask16>(0xFFFF), x); }
};
#elif defined(__AVX2__) && defined(__FMA__)
struct Lanes {
  using V = __m256;
  static constexpr int64_t kWidth = 8;
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V x) { _mm256_storeu_ps(p, x); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V div(V a, V b) { return _mm256_div_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V sqrt(V x) { return _mm256_sqrt_ps(x); }
};
#endif

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
// The update on whole vectors, in the scalar tail's order of operations; returns how many
// leading elements it did.
template <class L>
int64_t adamw_lanes(float* param, const float* grad, float* m, float* v, int64_t n,
                    const AdamScalars& k) {
  const auto scale = L::set1(k.grad_scale), decay = L::set1(k.decay);
  const auto b1 = L::set1(k.b1), omb1 = L::set1(k.one_minus_b1);
  const auto b2 = L::set1(k.b2), omb2 = L::set1(k.one_minus_b2);
  const auto bc2 = L::set1(k.bc2_sqrt), eps = L::set1(k.eps);
  const auto nstep = L::set1(k.neg_step_size);
  int64_t i = 0;
  for (; i + L::kWidth <= n; i += L::kWidth) {
    const auto g = L::mul(L::load(grad + i), scale);
    const auto p = L::mul(L::load(param + i), decay);
    const auto mi = L::fmadd(g, omb1, L::mul(L::load(m + i), b1));
    const auto vi = L::fmadd(L::mul(omb2, g), g, L::mul(L::load(v + i), b2));
    const auto denom = L::add(L::div(L::sqrt(vi), bc2), eps);
    L::store(param + i, L::add(p, L::div(L::mul(nstep, mi), denom)));
    L::store(m + i, mi);
    L::store(v + i, vi);
  }
  return i;
}
#endif

// The element-wise update, a plain function rather than the body of the OpenMP loop because
// the file's optimize pragma does not reach the functions OpenMP outlines. GCC will not
// vectorise sqrt without -fno-math-errno (which the build does not set), and a scalar
// sqrt + div makes this ~4x slower than memory allows, so the bulk uses intrinsics; the
// operations and their order are the same in every path.
void adamw_block(float* param, const float* grad, float* m, float* v, int64_t n,
                 const AdamScalars& k) {
  int64_t i = 0;
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
  i = adamw_lanes<Lanes>(param, grad, m, v, n, k);
#endif
  for (; i < n; ++i) {
    const float g = grad[i] * k.grad_scale;
    float p = param[i] * k.decay;                                  // param.mul_(1 - lr * wd)
    const float mi = std::fma(g, k.one_minus_b1, m[i] * k.b1);      // m.mul_(b1).add_(g, alpha=1-b1)
    const float vi = std::fma(k.one_minus_b2 * g, g, v[i] * k.b2);  // v.mul_(b2).addcmul_(g, g, 1-b2)
    const float denom = std::sqrt(vi) / k.bc2_sqrt + k.eps;         // (v.sqrt() / bc2_sqrt).add_(eps)
    p = p + (k.neg_step_size * mi) / denom;                         // p.addcdiv_(m, denom, -step_size)
    param[i] = p;
    m[i] = mi;
    v[i] = vi;
  }
}

}  // namespace

namespace {

// PyTorch's scalars (see as_decimal) for step t.
AdamScalars adam_scalars(float lr, float beta1, float beta2, float eps, float weight_decay, int64_t t,
                         float grad_scale, int64_t n) {
  TRI_CHECK(n >= 0, "adamw_update: bad size n={}", n);
  TRI_CHECK(t >= 1, "adamw_update: step t is 1-based, got {}", t);
  TRI_CHECK(beta1 >= 0.0f && beta1 < 1.0f && beta2 >= 0.0f && beta2 < 1.0f,
            "adamw_update: betas must be in [0, 1), got ({}, {})", beta1, beta2);
  const double lr_d = as_decimal(lr);
  const double b1_d = as_decimal(beta1);
  const double b2_d = as_decimal(beta2);
  const double wd_d = as_decimal(weight_decay);
  const double step = static_cast<double>(t);
  // Scalars exactly as PyTorch forms them: in double, then rounded to the tensor's float.
  const float decay = static_cast<float>(1.0 - lr_d * wd_d);
  const float b1 = static_cast<float>(b1_d);
  const float one_minus_b1 = static_cast<float>(1.0 - b1_d);
  const float b2 = static_cast<float>(b2_d);
  const float one_minus_b2 = static_cast<float>(1.0 - b2_d);
  const float neg_step_size = static_cast<float>(-(lr_d / (1.0 - std::pow(b1_d, step))));
  const float bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(b2_d, step)));
  return AdamScalars{decay, b1, one_minus_b1, b2, one_minus_b2, neg_step_size, bc2_sqrt, eps, grad_scale};
}

constexpr int64_t kAdamBlock = 1 << 14;
constexpr int64_t kSumChunk = 1 << 16;

// One chunk of sum_squares, a function of its own so the fp32 and 16-bit entries run the very
// same loop (and so the same association of the simd reduction) on the same fp32 values.
__attribute__((noinline)) double chunk_sum_squares(const float* x, int64_t n) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(x[i]) * x[i];
  return acc;
}

}  // namespace

void adamw_update(float* param, const float* grad, float* m, float* v, int64_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int64_t t,
                  float grad_scale) {
  detail::KernelTimer timer(KernelOp::kAdamW, false, n);
  const AdamScalars k = adam_scalars(lr, beta1, beta2, eps, weight_decay, t, grad_scale, n);
  const int64_t nblocks = (n + kAdamBlock - 1) / kAdamBlock;
#pragma omp parallel for schedule(static)
  for (int64_t blk = 0; blk < nblocks; ++blk) {
    const int64_t begin = blk * kAdamBlock;
    adamw_block(param + begin, grad + begin, m + begin, v + begin, std::min(kAdamBlock, n - begin), k);
  }
}

void adamw_update(float* param, const uint16_t* grad, Half grad_type, float* m, float* v, int64_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int64_t t, float grad_scale) {
  detail::KernelTimer timer(KernelOp::kAdamW, false, n);
  const AdamScalars k = adam_scalars(lr, beta1, beta2, eps, weight_decay, t, grad_scale, n);
  const int64_t nblocks = (n + kAdamBlock - 1) / kAdamBlock;
  // Each block's gradients widened (exactly) into a thread's 64 KiB of fp32, then the fp32
  // block update: elementwise, so the bits are those of the fp32 entry on the widened values.
#pragma omp parallel
  {
    std::vector<float> wide(static_cast<std::size_t>(std::min(kAdamBlock, n)));
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < nblocks; ++blk) {
      const int64_t begin = blk * kAdamBlock, len = std::min(kAdamBlock, n - begin);
      widen_half(grad_type, grad + begin, len, wide.data());
      adamw_block(param + begin, wide.data(), m + begin, v + begin, len, k);
    }
  }
}

double sum_squares(const float* x, int64_t n) {
  detail::KernelTimer timer(KernelOp::kSumSquares, false, n);
  TRI_CHECK(n >= 0, "sum_squares: bad size n={}", n);
  // Fixed-size chunks summed in double, then the chunk sums added in order: the result is
  // the same for every thread count (a plain OpenMP reduction would not be).
  const int64_t nchunks = (n + kSumChunk - 1) / kSumChunk;
  std::vector<double> partial(static_cast<size_t>(nchunks));
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < nchunks; ++k) {
    const int64_t begin = k * kSumChunk;
    partial[static_cast<size_t>(k)] = chunk_sum_squares(x + begin, std::min(n, begin + kSumChunk) - begin);
  }
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

double sum_squares(const uint16_t* x, Half type, int64_t n) {
  detail::KernelTimer timer(KernelOp::kSumSquares, false, n);
  TRI_CHECK(n >= 0, "sum_squares: bad size n={}", n);
  const int64_t nchunks = (n + kSumChunk - 1) / kSumChunk;
  std::vector<double> partial(static_cast<size_t>(nchunks));
#pragma omp parallel
  {
    std::vector<float> wide(static_cast<std::size_t>(std::min(kSumChunk, n)));
#pragma omp for schedule(static)
    for (int64_t k = 0; k < nchunks; ++k) {
      const int64_t begin = k * kSumChunk, len = std::min(n, begin + kSumChunk) - begin;
      widen_half(type, x + begin, len, wide.data());
      partial[static_cast<size_t>(k)] = chunk_sum_squares(wide.data(), len);
    }
  }
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

}  // namespace trident::kernels
