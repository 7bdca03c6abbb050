// The matmuls of one model, at its precision (--precision). Every dense product of the layers
// and the LM head goes through the model's MatmulEngine, so the precision is chosen in one place:
//   kFp32  sgemm (kernels/matmul.cpp), bitwise the kernels::matmul_* functions;
//   kBf16  torch.autocast("cpu", bfloat16) numerics: both operands of every product (forward
//          and both backward products) are rounded to bf16 (nearest even, kernels/bf16.h) and
//          multiplied with fp32 accumulation by a Bf16Gemm (kernels/matmul_bf16.h); outputs,
//          biases and their gradients, and everything outside the matmuls stay fp32. A weight
//          operand inside a registered bf16 weight copy (add_weight_copy: the model's once per
//          step, nn/bf16_weights.h) is read from it; any other weight is converted per call.
//          The fp32 parameters stay the master copy either way.
//   kFp16  the same with fp16 rounding (kernels/fp16.h): operands become the nearest fp16 value
//          (beyond 65504: inf, which the loss scaler of --precision fp16 detects), held in fp32
//          and multiplied by the fp32 sgemm, exact per product (11-bit significands), fp32
//          accumulation: an fp16 tensor-core matmul's numerics, on any CPU, at sgemm speed.
// Not thread-safe (like Bf16Gemm): one engine per model, reused scratch for the bf16 operands.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/bf16.h"

namespace trident::kernels {

enum class Precision { kFp32, kBf16, kFp16 };

// The spellings, indexed by the enum's value: fp32, bf16, fp16.
std::span<const std::string_view> precision_names();

class Bf16Gemm;

// An activation operand of a product: fp32, or already rounded to the engine's 16 bits (bf16
// bits under kBf16, fp16 bits under kFp16: exactly what the fp32 entry points round it to).
// Saved activations that backward reads only as a matmul operand are stored so under
// bf16/fp16 (nn/saved_operand.h); the engine then skips its own rounding pass.
struct ActOperand {
  const float* f32 = nullptr;
  const uint16_t* bits = nullptr;
  Precision rounded = Precision::kFp32;  // what `bits` holds
  ActOperand(const float* x) : f32(x) {}  // NOLINT: implicit, so fp32 callers are unchanged
  ActOperand(const uint16_t* b, Precision p) : bits(b), rounded(p) {}
  // The operand from element k on (a block of rows: one expert's, say).
  ActOperand at(int64_t k) const { return bits != nullptr ? ActOperand(bits + k, rounded) : ActOperand(f32 + k); }
};

class MatmulEngine {
 public:
  explicit MatmulEngine(Precision precision = Precision::kFp32);
  ~MatmulEngine();
  MatmulEngine(MatmulEngine&&) noexcept;
  MatmulEngine& operator=(MatmulEngine&&) noexcept;

  Precision precision() const { return precision_; }
  // "fp32 sgemm", "bf16 operands, fp32 accumulation: <Bf16Gemm backend>" or "fp16 operands, ...".
  std::string describe() const;

  // The contracts of kernels::matmul_forward / _backward / _forward_nt / _backward_nt
  // (kernels/kernels.h): same shapes, same accumulate/overwrite conventions.
  void forward(float* out, const float* inp, const float* weight, const float* bias, int64_t N,
               int64_t C, int64_t OC);
  void backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                const float* weight, int64_t N, int64_t C, int64_t OC);
  void forward_nt(float* out, const float* inp, const float* table, int64_t N, int64_t C,
                  int64_t V);
  void backward_nt(float* dinp, float* dtable, const float* dout, const float* inp,
                   const float* table, int64_t N, int64_t C, int64_t V);

  // The same products with the activation operand (inp) fp32 or pre-rounded; bitwise the
  // fp32-operand entry points given the fp32 values the 16 bits were rounded from. A
  // pre-rounded operand must be of this engine's precision (kBf16 or kFp16).
  void forward(float* out, ActOperand inp, const float* weight, const float* bias, int64_t N, int64_t C,
               int64_t OC);
  void backward(float* dinp, float* dweight, float* dbias, const float* dout, ActOperand inp,
                const float* weight, int64_t N, int64_t C, int64_t OC);
  void forward_nt(float* out, ActOperand inp, const float* table, int64_t N, int64_t C, int64_t V);
  void backward_nt(float* dinp, float* dtable, const float* dout, ActOperand inp, const float* table,
                   int64_t N, int64_t C, int64_t V);

  // The rounding the entry points apply to an operand, as 16-bit words: bf16 (kBf16) or fp16
  // (kFp16) bits of in[0..n); and back to fp32 (exact). Throws under kFp32.
  static void round_operand(Precision p, uint16_t* out, const float* in, int64_t n);
  static void widen_operand(Precision p, float* out, const uint16_t* in, int64_t n);

  // Pre-rounded weight operands (kBf16 and kFp16; ignored under kFp32): `copy` holds the 16-bit
  // values (bf16 bits under kBf16, fp16 bits under kFp16) of the fp32 weights [fp32, fp32 + n)
  // until remove_weight_copy(fp32). A product whose weight operand (forward's / backward's
  // `weight`, the _nt `table`) lies wholly inside a registered range reads the copy at the same
  // offset instead of rounding the weight again (fp16: widened, exactly, into scratch). The
  // caller keeps the copy what it means (nearest-even bits of the current values: then every
  // product is bitwise as without it; or a deliberate other rounding, nn/bf16_weights.h's
  // stochastic one). The fp32 range need not be readable: under ZeRO-1/2's sharded master
  // (parallel/zero_master.h) it is only the key the copy is found by.
  void add_weight_copy(const float* fp32, const bf16_t* copy, int64_t n);
  void remove_weight_copy(const float* fp32);
  // Products that read a registered copy since construction (tests, benchmarks).
  int64_t weight_copy_hits() const { return weight_copy_hits_; }

 private:
  // A pre-rounded operand's fp16 values (kFp16), widened into scratch `s`.
  const float* widened16(std::vector<float>& s, const ActOperand& x, int64_t n);
  void check_rounded(const ActOperand& x) const;
  // The registered copy's words for weights [w, w + n), or null.
  const uint16_t* registered_copy(const float* w, int64_t n);
  // The bf16 weight operand: from a registered copy, else rounded into b-scratch.
  const bf16_t* weight_operand(const float* w, int64_t n);
  // The fp16 weight operand (as fp32 values) in b16-scratch: a registered copy widened, else rounded.
  const float* weight16(const float* w, int64_t n);
  // bf16 copies of two operands, in scratch reused across calls.
  const bf16_t* round_a(const float* x, int64_t n);
  const bf16_t* round_b(const float* x, int64_t n);

  // fp16 values of two operands, as fp32, in scratch reused across calls.
  const float* round16_a(const float* x, int64_t n);
  const float* round16_b(const float* x, int64_t n);

  Precision precision_;
  std::unique_ptr<Bf16Gemm> gemm_;  // kBf16 only
  std::vector<bf16_t> a_, b_;
  std::vector<float> a16_, b16_;  // kFp16 only
  struct WeightCopy {
    const float* fp32;
    const bf16_t* copy;
    int64_t n;
  };
  std::vector<WeightCopy> weight_copies_;  // a few: the model's flat copy, ZeRO-3's gathered groups, ZeRO-1/2's
  int64_t weight_copy_hits_ = 0;
};

}  // namespace trident::kernels
