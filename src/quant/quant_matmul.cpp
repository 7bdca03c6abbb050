// Kernels on packed weights (see quant_matmul.h). Code that executes AVX-512 carries a target
// attribute (as kernels/gemm_bf16_avx512.cpp does), so nothing shared is emitted with it.
#include "quant/quant_matmul.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "kernels/kernels.h"

namespace trident::quant {

#define TRI_AVX512_VNNI [[gnu::target("avx512f,avx512bw,avx512vnni")]]
#define TRI_AVX512F [[gnu::target("avx512f,avx512bw")]]

bool cpu_has_avx512_vnni() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vnni");
}

bool cpu_has_avx512f() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
}

const char* kernel_path_name(Format format) {
  switch (format) {
    case Format::kFp32: return "sgemm";
    case Format::kInt8: return cpu_has_avx512_vnni() ? "avx512-vnni" : "portable";
    case Format::kQ4: return cpu_has_avx512f() ? "avx512f" : "portable";
  }
  return "?";
}

void quantize_rows_int8(int8_t* xq, float* scale, const float* x, int64_t N, int64_t I) {
  for (int64_t n = 0; n < N; ++n) {
    const float* row = x + n * I;
    float amax = 0.0f;
    for (int64_t i = 0; i < I; ++i) amax = std::max(amax, std::abs(row[i]));
    const float s = amax > 0.0f ? amax / 127.0f : 1.0f;
    scale[n] = s;
    const float inv = 1.0f / s;
    for (int64_t i = 0; i < I; ++i) {
      xq[n * I + i] = static_cast<int8_t>(std::clamp(std::nearbyint(row[i] * inv), -127.0f, 127.0f));
    }
  }
}

namespace {

// Horizontal sums through memory: GCC 12's _mm512_reduce_add_* warn (-Wmaybe-uninitialized).
TRI_AVX512F int32_t horizontal_sum(__m512i v) {
  alignas(64) int32_t lanes[16];
  _mm512_store_si512(lanes, v);
  int32_t s = 0;
  for (int32_t l : lanes) s += l;
  return s;
}
TRI_AVX512F float horizontal_sum(__m512 v) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  float s = 0.0f;
  for (float l : lanes) s += l;
  return s;
}

int32_t dot_int8_portable(const int8_t* x, const int8_t* w, int64_t I) {
  int32_t acc = 0;
  for (int64_t i = 0; i < I; ++i) acc += static_cast<int32_t>(x[i]) * static_cast<int32_t>(w[i]);
  return acc;
}

// sum_i x_i w_i with x as u8 = x + 128: vpdpbusd sums (x_i + 128) w_i; the caller subtracts
// 128 * row_sum. Exact in int32 for I < 2^31 / (255 * 127).
[[gnu::noinline]] TRI_AVX512_VNNI int32_t dot_u8s8_vnni(const int8_t* x, const int8_t* w, int64_t I) {
  const __m512i shift = _mm512_set1_epi8(static_cast<char>(0x80));  // x + 128 == x ^ 0x80 in u8
  __m512i acc = _mm512_setzero_si512();
  int64_t i = 0;
  for (; i + 64 <= I; i += 64) {
    const __m512i xv = _mm512_xor_si512(_mm512_loadu_si512(x + i), shift);
    acc = _mm512_dpbusd_epi32(acc, xv, _mm512_loadu_si512(w + i));
  }
  int32_t sum = horizontal_sum(acc);
  for (; i < I; ++i) sum += (static_cast<int32_t>(x[i]) + 128) * static_cast<int32_t>(w[i]);
  return sum;
}

float dot_q4_portable(const float* x, const QuantMatrix& w, int64_t o) {
  const int64_t G = w.group, half = G / 2, groups = w.groups_per_row();
  const uint8_t* bytes = w.q4.data() + o * w.cols / 2;
  float acc = 0.0f;
  for (int64_t g = 0; g < groups; ++g) {
    const float s = w.scale[static_cast<std::size_t>(o * groups + g)];
    const float m = w.offset[static_cast<std::size_t>(o * groups + g)];
    const float* xg = x + g * G;
    const uint8_t* b = bytes + g * half;
    for (int64_t j = 0; j < half; ++j) {
      acc += (s * static_cast<float>(b[j] & 0xF) + m) * xg[j];
      acc += (s * static_cast<float>(b[j] >> 4) + m) * xg[j + half];
    }
  }
  return acc;
}

// GCC 12's AVX-512 headers start unmasked conversions from a self-initialised _mm512_undefined
// value, which -Wmaybe-uninitialized reports (a known false positive); silenced here only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
[[gnu::noinline]] TRI_AVX512F float dot_q4_avx512(const float* x, const QuantMatrix& w, int64_t o) {
  const int64_t G = w.group, half = G / 2, groups = w.groups_per_row();
  const uint8_t* bytes = w.q4.data() + o * w.cols / 2;
  const __m512i low4 = _mm512_set1_epi32(0xF);
  __m512 acc = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    const __m512 s = _mm512_set1_ps(w.scale[static_cast<std::size_t>(o * groups + g)]);
    const __m512 m = _mm512_set1_ps(w.offset[static_cast<std::size_t>(o * groups + g)]);
    const float* xg = x + g * G;
    const uint8_t* b = bytes + g * half;
    for (int64_t c = 0; c < half; c += 16) {
      const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + c)));
      const __m512 wlo = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(q, low4)), s, m);
      const __m512 whi = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(q, 4)), s, m);
      acc = _mm512_fmadd_ps(wlo, _mm512_loadu_ps(xg + c), acc);
      acc = _mm512_fmadd_ps(whi, _mm512_loadu_ps(xg + half + c), acc);
    }
  }
  return horizontal_sum(acc);
}
#pragma GCC diagnostic pop

bool use_simd(KernelPath path, bool available) {
  if (path == KernelPath::kPortable) return false;
  TRI_CHECK(path != KernelPath::kSimd || available, "the SIMD kernel path was asked for but this CPU lacks it");
  return available;
}

// The product itself (quant_linear adds the hooks around it).
void linear_product(float* out, const float* x, const QuantMatrix& w, const float* bias, int64_t N,
                    LinearScratch& scratch, KernelPath path) {
  const int64_t O = w.rows, I = w.cols;
  if (w.format == Format::kFp32) {
    kernels::matmul_forward_nt(out, x, w.fp32.data(), N, I, O);
    if (bias != nullptr) {
      for (int64_t n = 0; n < N; ++n) kernels::residual_forward(out + n * O, out + n * O, bias, O);
    }
    return;
  }
  if (w.format == Format::kInt8) {
    static const bool vnni_available = cpu_has_avx512_vnni();
    const bool vnni = use_simd(path, vnni_available);
    scratch.xq.resize(static_cast<std::size_t>(N * I));
    scratch.xscale.resize(static_cast<std::size_t>(N));
    quantize_rows_int8(scratch.xq.data(), scratch.xscale.data(), x, N, I);
    const int8_t* xq = scratch.xq.data();
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < O; ++o) {
      const int8_t* wr = w.q8.data() + o * I;
      const float so = w.scale[static_cast<std::size_t>(o)];
      const int32_t shift = 128 * w.row_sum[static_cast<std::size_t>(o)];
      for (int64_t n = 0; n < N; ++n) {
        const int32_t dot = vnni ? dot_u8s8_vnni(xq + n * I, wr, I) - shift : dot_int8_portable(xq + n * I, wr, I);
        float y = static_cast<float>(dot) * (scratch.xscale[static_cast<std::size_t>(n)] * so);
        if (bias != nullptr) y += bias[o];
        out[n * O + o] = y;
      }
    }
    return;
  }
  static const bool avx512_available = cpu_has_avx512f();
  const bool simd = use_simd(path, avx512_available);
#pragma omp parallel for schedule(static)
  for (int64_t o = 0; o < O; ++o) {
    for (int64_t n = 0; n < N; ++n) {
      float y = simd ? dot_q4_avx512(x + n * I, w, o) : dot_q4_portable(x + n * I, w, o);
      if (bias != nullptr) y += bias[o];
      out[n * O + o] = y;
    }
  }
}

}  // namespace

void quant_linear(float* out, const float* x, const QuantMatrix& w, const float* bias, int64_t N,
                  LinearScratch& scratch, KernelPath path) {
  if (scratch.observe) scratch.observe(w, x, N);
  linear_product(out, x, w, bias, N, scratch, path);
  if (scratch.add_after) scratch.add_after(w, x, out, N);
}

}  // namespace trident::quant
