// A LoRA adapter on one linear layer (nn/lora.h), forward and backward:
//   y += s (x A^T) B^T,   s = alpha / r,   A [r, in], B [out, r]
//   v = s x A^T (N, r);   dB += dy^T v;   du = s dy B (N, r);   dA += du^T x;   dx += du A
// The base layer computes its own product (and, frozen, no weight gradient); the adapter adds
// to its output and to its input gradient. v is recomputed in backward rather than saved: one
// (N, in) x (in, r) product, small beside the base's, and no per-layer activation to carry.
//
// Tensor parallelism (as the base splits, lora.h):
//   column-parallel base (this rank's output columns): A replicated, B this rank's rows. v is
//     the same on every rank; du is a partial sum over the ranks' columns, so dA takes du summed
//     over tp (an (N, r) allreduce) while dx takes this rank's du (the base's input gradient is
//     partial too and the block sums it once);
//   row-parallel base (this rank's input columns, partial output sums): A this rank's columns,
//     B replicated. v is summed over tp before B, and s v B^T is added to the partial sums on
//     tp rank 0 only, so the tp sum counts it once; backward sees the full output gradient, so
//     dB and du are identical on every rank and dA, dx are this rank's columns.
#pragma once

#include <cstdint>
#include <optional>

#include "kernels/matmul_engine.h"
#include "nn/param_decl.h"
#include "nn/parameters.h"
#include "nn/tensor_parallel.h"

namespace trident::nn {

// What a layer needs to attach adapters: the run's scale and the tp group.
struct LoraContext {
  float scale = 0.0f;  // alpha / r
  TpContext tp;
};

class LoraAdapter {
 public:
  // The adapter registered for `base`, if any (ParameterSet holds "<module>.lora_A.weight").
  static std::optional<LoraAdapter> find(const ParameterSet& params, const ParamDecl& base, const LoraContext& ctx);

  int64_t rank() const { return r_; }
  int64_t in_width() const { return in_; }    // local
  int64_t out_width() const { return out_; }  // local
  // Work floats forward and backward need for N tokens (at most lora_scratch_floats).
  int64_t work_floats(int64_t N) const { return N * (in_ + out_ + 3 * r_); }

  // out (N, out_width(), row stride ld) += s (in A^T) B^T; in (N, in_width()).
  void forward(kernels::MatmulEngine& mm, const ParameterSet& params, float* out, int64_t ld, kernels::ActOperand in,
               int64_t N, float* work) const;
  // dinp (N, in_width()) += the adapter's input gradient; A's and B's gradients accumulate.
  // dout (N, out_width(), row stride ld): d loss / d out (column: this rank's columns; row: the
  // full gradient of the summed output).
  void backward(kernels::MatmulEngine& mm, ParameterSet& params, float* dinp, const float* dout, int64_t ld,
                kernels::ActOperand in, int64_t N, float* work) const;

 private:
  LoraAdapter() = default;
  // v (N, r) = s in A^T, summed over tp for a row-parallel base.
  void down(kernels::MatmulEngine& mm, const ParameterSet& params, float* v, kernels::ActOperand in, int64_t N) const;

  int a_ = -1, b_ = -1;
  bool row_ = false;
  float scale_ = 0.0f;
  TpContext tp_;
  int64_t r_ = 0, in_ = 0, out_ = 0;
};

}  // namespace trident::nn
