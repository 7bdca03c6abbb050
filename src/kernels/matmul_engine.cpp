// A model's matmuls at its precision; see matmul_engine.h.
#include "kernels/matmul_engine.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <functional>

#include "core/check.h"
#include "kernels/fp16.h"
#include "kernels/kernels.h"
#include "kernels/matmul_bf16.h"
#include "kernels/profile.h"

namespace trident::kernels {
namespace {

constexpr std::array<std::string_view, 3> kPrecisionNames = {"fp32", "bf16", "fp16"};

void check_sizes(const char* what, int64_t N, int64_t C, int64_t OC) {
  TRI_CHECK(N >= 0 && C >= 0 && OC >= 0, "{}: bad sizes N={} C={} OC={}", what, N, C, OC);
}

}  // namespace

std::span<const std::string_view> precision_names() { return kPrecisionNames; }

MatmulEngine::MatmulEngine(Precision precision) : precision_(precision) {
  if (precision_ == Precision::kBf16) gemm_ = std::make_unique<Bf16Gemm>();
}
MatmulEngine::~MatmulEngine() = default;
MatmulEngine::MatmulEngine(MatmulEngine&&) noexcept = default;
MatmulEngine& MatmulEngine::operator=(MatmulEngine&&) noexcept = default;

std::string MatmulEngine::describe() const {
  if (precision_ == Precision::kFp32) return "fp32 sgemm";
  if (precision_ == Precision::kFp16) return "fp16 operands, fp32 accumulation: fp32 sgemm on fp16-rounded values";
  return "bf16 operands, fp32 accumulation: " + gemm_->describe();
}

namespace {
// x converted by `convert` into `scratch`, grown to n and reused across calls.
template <class T, class Convert>
const T* converted(std::vector<T>& scratch, const float* x, int64_t n, Convert convert) {
  if (scratch.size() < static_cast<size_t>(n)) scratch.resize(static_cast<size_t>(n));
  convert(scratch.data(), x, n);
  return scratch.data();
}
// round_to_fp16 is overloaded (scalar and array): this names the array form.
void to_fp16_values(float* out, const float* in, int64_t n) { round_to_fp16(out, in, n); }
}  // namespace

const bf16_t* MatmulEngine::round_a(const float* x, int64_t n) { return converted(a_, x, n, convert_to_bf16); }
const bf16_t* MatmulEngine::round_b(const float* x, int64_t n) { return converted(b_, x, n, convert_to_bf16); }
void MatmulEngine::add_weight_copy(const float* fp32, const bf16_t* copy, int64_t n) {
  TRI_CHECK(fp32 != nullptr && copy != nullptr && n > 0, "add_weight_copy: empty range");
  if (precision_ == Precision::kFp32) return;
  remove_weight_copy(fp32);
  weight_copies_.push_back({fp32, copy, n});
}

void MatmulEngine::remove_weight_copy(const float* fp32) {
  std::erase_if(weight_copies_, [&](const WeightCopy& c) { return c.fp32 == fp32; });
}

const uint16_t* MatmulEngine::registered_copy(const float* w, int64_t n) {
  const std::less_equal<const float*> le;  // a total order over pointers of distinct buffers
  for (const WeightCopy& c : weight_copies_) {
    if (le(c.fp32, w) && le(w + n, c.fp32 + c.n)) {
      ++weight_copy_hits_;
      return c.copy + (w - c.fp32);
    }
  }
  return nullptr;
}

const bf16_t* MatmulEngine::weight_operand(const float* w, int64_t n) {
  if (const uint16_t* c = registered_copy(w, n)) return c;
  return round_b(w, n);
}

const float* MatmulEngine::weight16(const float* w, int64_t n) {
  const uint16_t* c = registered_copy(w, n);
  if (c == nullptr) return round16_b(w, n);
  if (b16_.size() < static_cast<size_t>(n)) b16_.resize(static_cast<size_t>(n));
  widen_operand(Precision::kFp16, b16_.data(), c, n);  // exact: the values round16_b would make
  return b16_.data();
}

const float* MatmulEngine::round16_a(const float* x, int64_t n) { return converted(a16_, x, n, to_fp16_values); }
const float* MatmulEngine::round16_b(const float* x, int64_t n) { return converted(b16_, x, n, to_fp16_values); }

void MatmulEngine::forward(float* out, const float* inp, const float* weight, const float* bias,
                           int64_t N, int64_t C, int64_t OC) {
  if (precision_ == Precision::kFp32) return matmul_forward(out, inp, weight, bias, N, C, OC);
  if (precision_ == Precision::kFp16) {
    return matmul_forward(out, round16_a(inp, N * C), weight16(weight, C * OC), bias, N, C, OC);
  }
  detail::KernelTimer timer(KernelOp::kMatmul, false, N, C, OC);
  check_sizes("matmul_forward (bf16)", N, C, OC);
  float beta = 0.0f;
  if (bias != nullptr) {  // seeded, then accumulated into, as the fp32 kernel does
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) std::memcpy(out + n * OC, bias, static_cast<size_t>(OC) * sizeof(float));
    beta = 1.0f;
  }
  // out (N, OC) = inp (N, C) @ weight (C, OC)
  gemm_->gemm(false, false, N, OC, C, round_a(inp, N * C), C, weight_operand(weight, C * OC), OC, beta, out, OC);
}

void MatmulEngine::backward(float* dinp, float* dweight, float* dbias, const float* dout,
                            const float* inp, const float* weight, int64_t N, int64_t C, int64_t OC) {
  if (precision_ == Precision::kFp32) return matmul_backward(dinp, dweight, dbias, dout, inp, weight, N, C, OC);
  if (precision_ == Precision::kFp16) {
    // dout is rounded once and reused by both products; the weight's rounding is dropped
    // before the input's is made (one b-scratch serves both, in turn).
    const float* dout16 = round16_a(dout, N * OC);
    if (dinp != nullptr) matmul_backward(dinp, nullptr, nullptr, dout16, nullptr, weight16(weight, C * OC), N, C, OC);
    if (dweight != nullptr) matmul_backward(nullptr, dweight, nullptr, dout16, round16_b(inp, N * C), nullptr, N, C, OC);
  }
  if (precision_ == Precision::kBf16) {
    detail::KernelTimer timer(KernelOp::kMatmul, true, N, C, OC);
    check_sizes("matmul_backward (bf16)", N, C, OC);
    const bf16_t* dout16 = round_a(dout, N * OC);
    // dinp (N, C) = dout (N, OC) @ weight (C, OC)^T
    if (dinp != nullptr) gemm_->gemm(false, true, N, C, OC, dout16, OC, weight_operand(weight, C * OC), OC, 0.0f, dinp, C);
    // dweight (C, OC) += inp (N, C)^T @ dout (N, OC)
    if (dweight != nullptr) gemm_->gemm(true, false, C, OC, N, round_b(inp, N * C), C, dout16, OC, 1.0f, dweight, OC);
  }
  // dbias: the fp32 kernel's column sums of the fp32 dout (no product, so no rounding).
  if (dbias != nullptr) matmul_backward(nullptr, nullptr, dbias, dout, nullptr, nullptr, N, C, OC);
}

void MatmulEngine::forward_nt(float* out, const float* inp, const float* table, int64_t N, int64_t C,
                              int64_t V) {
  if (precision_ == Precision::kFp32) return matmul_forward_nt(out, inp, table, N, C, V);
  if (precision_ == Precision::kFp16) {
    return matmul_forward_nt(out, round16_a(inp, N * C), weight16(table, V * C), N, C, V);
  }
  detail::KernelTimer timer(KernelOp::kMatmulNt, false, N, C, V);
  check_sizes("matmul_forward_nt (bf16)", N, C, V);
  // out (N, V) = inp (N, C) @ table (V, C)^T
  gemm_->gemm(false, true, N, V, C, round_a(inp, N * C), C, weight_operand(table, V * C), C, 0.0f, out, V);
}

void MatmulEngine::backward_nt(float* dinp, float* dtable, const float* dout, const float* inp,
                               const float* table, int64_t N, int64_t C, int64_t V) {
  if (precision_ == Precision::kFp32) return matmul_backward_nt(dinp, dtable, dout, inp, table, N, C, V);
  if (precision_ == Precision::kFp16) {
    const float* dout16 = round16_a(dout, N * V);
    if (dinp != nullptr) matmul_backward_nt(dinp, nullptr, dout16, nullptr, weight16(table, V * C), N, C, V);
    if (dtable != nullptr) matmul_backward_nt(nullptr, dtable, dout16, round16_b(inp, N * C), nullptr, N, C, V);
    return;
  }
  detail::KernelTimer timer(KernelOp::kMatmulNt, true, N, C, V);
  check_sizes("matmul_backward_nt (bf16)", N, C, V);
  const bf16_t* dout16 = round_a(dout, N * V);
  // dinp (N, C) = dout (N, V) @ table (V, C)
  if (dinp != nullptr) gemm_->gemm(false, false, N, C, V, dout16, V, weight_operand(table, V * C), C, 0.0f, dinp, C);
  // dtable (V, C) += dout (N, V)^T @ inp (N, C)
  if (dtable != nullptr) gemm_->gemm(true, false, V, C, N, dout16, V, round_b(inp, N * C), C, 1.0f, dtable, C);
}


// ---- pre-rounded activation operands ----

void MatmulEngine::round_operand(Precision p, uint16_t* out, const float* in, int64_t n) {
  TRI_CHECK(p != Precision::kFp32, "round_operand: fp32 operands are not rounded");
  if (p == Precision::kBf16) return convert_to_bf16(out, in, n);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = float_to_fp16_bits(in[i]);
}

void MatmulEngine::widen_operand(Precision p, float* out, const uint16_t* in, int64_t n) {
  TRI_CHECK(p != Precision::kFp32, "widen_operand: fp32 operands are not rounded");
  if (p == Precision::kBf16) return convert_from_bf16(out, in, n);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = fp16_bits_to_float(in[i]);
}

void MatmulEngine::check_rounded(const ActOperand& x) const {
  TRI_CHECK(x.rounded == precision_ && precision_ != Precision::kFp32,
            "a matmul operand stored in {} bits was given to a {} matmul engine", precision_names()[static_cast<int>(x.rounded)],
            precision_names()[static_cast<int>(precision_)]);
}

const float* MatmulEngine::widened16(std::vector<float>& s, const ActOperand& x, int64_t n) {
  if (s.size() < static_cast<size_t>(n)) s.resize(static_cast<size_t>(n));
  widen_operand(Precision::kFp16, s.data(), x.bits, n);
  return s.data();
}

void MatmulEngine::forward(float* out, ActOperand inp, const float* weight, const float* bias, int64_t N,
                           int64_t C, int64_t OC) {
  if (inp.bits == nullptr) return forward(out, inp.f32, weight, bias, N, C, OC);
  check_rounded(inp);
  if (precision_ == Precision::kFp16) {
    return matmul_forward(out, widened16(a16_, inp, N * C), weight16(weight, C * OC), bias, N, C, OC);
  }
  detail::KernelTimer timer(KernelOp::kMatmul, false, N, C, OC);
  check_sizes("matmul_forward (bf16)", N, C, OC);
  float beta = 0.0f;
  if (bias != nullptr) {
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) std::memcpy(out + n * OC, bias, static_cast<size_t>(OC) * sizeof(float));
    beta = 1.0f;
  }
  gemm_->gemm(false, false, N, OC, C, inp.bits, C, weight_operand(weight, C * OC), OC, beta, out, OC);
}

void MatmulEngine::backward(float* dinp, float* dweight, float* dbias, const float* dout, ActOperand inp,
                            const float* weight, int64_t N, int64_t C, int64_t OC) {
  if (inp.bits == nullptr) return backward(dinp, dweight, dbias, dout, inp.f32, weight, N, C, OC);
  check_rounded(inp);
  if (precision_ == Precision::kFp16) {
    const float* dout16 = round16_a(dout, N * OC);
    if (dinp != nullptr) matmul_backward(dinp, nullptr, nullptr, dout16, nullptr, weight16(weight, C * OC), N, C, OC);
    if (dweight != nullptr) {
      matmul_backward(nullptr, dweight, nullptr, dout16, widened16(b16_, inp, N * C), nullptr, N, C, OC);
    }
  } else {
    detail::KernelTimer timer(KernelOp::kMatmul, true, N, C, OC);
    check_sizes("matmul_backward (bf16)", N, C, OC);
    const bf16_t* dout16 = round_a(dout, N * OC);
    if (dinp != nullptr) gemm_->gemm(false, true, N, C, OC, dout16, OC, weight_operand(weight, C * OC), OC, 0.0f, dinp, C);
    if (dweight != nullptr) gemm_->gemm(true, false, C, OC, N, inp.bits, C, dout16, OC, 1.0f, dweight, OC);
  }
  if (dbias != nullptr) matmul_backward(nullptr, nullptr, dbias, dout, nullptr, nullptr, N, C, OC);
}

void MatmulEngine::forward_nt(float* out, ActOperand inp, const float* table, int64_t N, int64_t C, int64_t V) {
  if (inp.bits == nullptr) return forward_nt(out, inp.f32, table, N, C, V);
  check_rounded(inp);
  if (precision_ == Precision::kFp16) {
    return matmul_forward_nt(out, widened16(a16_, inp, N * C), weight16(table, V * C), N, C, V);
  }
  detail::KernelTimer timer(KernelOp::kMatmulNt, false, N, C, V);
  check_sizes("matmul_forward_nt (bf16)", N, C, V);
  gemm_->gemm(false, true, N, V, C, inp.bits, C, weight_operand(table, V * C), C, 0.0f, out, V);
}

void MatmulEngine::backward_nt(float* dinp, float* dtable, const float* dout, ActOperand inp, const float* table,
                               int64_t N, int64_t C, int64_t V) {
  if (inp.bits == nullptr) return backward_nt(dinp, dtable, dout, inp.f32, table, N, C, V);
  check_rounded(inp);
  if (precision_ == Precision::kFp16) {
    const float* dout16 = round16_a(dout, N * V);
    if (dinp != nullptr) matmul_backward_nt(dinp, nullptr, dout16, nullptr, weight16(table, V * C), N, C, V);
    if (dtable != nullptr) matmul_backward_nt(nullptr, dtable, dout16, widened16(b16_, inp, N * C), nullptr, N, C, V);
    return;
  }
  detail::KernelTimer timer(KernelOp::kMatmulNt, true, N, C, V);
  check_sizes("matmul_backward_nt (bf16)", N, C, V);
  const bf16_t* dout16 = round_a(dout, N * V);
  if (dinp != nullptr) gemm_->gemm(false, false, N, C, V, dout16, V, weight_operand(table, V * C), C, 0.0f, dinp, C);
  if (dtable != nullptr) gemm_->gemm(true, false, V, C, N, dout16, V, inp.bits, C, 1.0f, dtable, C);
}

}  // namespace trident::kernels
