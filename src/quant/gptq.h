// GPTQ (Frantar, Ashkboos, Hoefler, Alistarh 2022, "GPTQ: Accurate Post-Training Quantization for
// Generative Pre-trained Transformers"): quantizes one matrix W [out, in] to the same formats as
// round-to-nearest (quant/quant_format.h), choosing the codes so that the layer's output on
// calibration inputs X (N, in) moves as little as possible: it reduces, greedily column by column,
//   e(Q) = sum_o (w_o - q_o)^T H (w_o - q_o),  H = 2 X^T X  (= 2 ||X W^T - X Q^T||_F^2).
// Each input column i in turn is rounded (every output row at once) and its rounding error,
// divided by [H^-1]_ii, is spread over the columns not yet rounded along row i of H^-1 (the
// Optimal Brain Surgeon update, in fixed order). As in the paper:
// - dampening: 1% of mean(diag H) is added to H's diagonal (a well-conditioned inverse);
//   inputs never seen (diag H = 0) get H_ii = 1: no error flows into or out of them, so they are
//   rounded to nearest;
// - H^-1 with the columns before i eliminated is read off the upper Cholesky factor U of H^-1
//   (H^-1 = U^T U): its row i, scaled by U_ii, is that row of the eliminated inverse;
// - lazy batches: the error feedback is applied inside a block of 128 columns at once, and to
//   the columns after the block once per block;
// - q4: a group's scale and offset are fixed when the group's first column is reached, from the
//   group's weights as updated by then (GPTQ's groupsize); int8: each row's scale from the
//   original row (max|w| / 127). No act-order: columns go in their natural order.
// Everything that decides the codes (H, the factorisations, the updated weights) is fp64; the
// scales, offsets and codes are those of the format, computed with the shared grid functions,
// so with H = identity GPTQ gives round-to-nearest's matrix bit for bit.
#pragma once

#include <cstdint>
#include <vector>

#include "quant/quant_format.h"

namespace trident::quant {

struct GptqOptions {
  double damp = 0.01;  // fraction of mean(diag H) added to the diagonal
  int block = 128;     // columns per lazy batch
};

// H = 2 X^T X of one linear's inputs, accumulated over calls: each call's product is an fp32
// matrix product over its n rows (at most a window of the calibration set), and the calls are
// summed in double (the reference implementation keeps H in fp32 throughout).
class Hessian {
 public:
  explicit Hessian(int64_t cols);
  void add(const float* x, int64_t n);  // x (n, cols)
  int64_t cols() const { return cols_; }
  int64_t rows_seen() const { return rows_; }
  const std::vector<double>& h() const { return h_; }

 private:
  int64_t cols_, rows_ = 0;
  std::vector<double> h_;   // (cols, cols)
  std::vector<float> tmp_;  // one call's X^T X
};

// w (rows, cols) [out, in]; h (cols, cols) = 2 X^T X (not modified). Throws on a shape
// mismatch, a non-finite H, or a q4 group size that does not divide cols.
QuantMatrix gptq_quantize(const float* w, int64_t rows, int64_t cols, Format format, int group,
                          const std::vector<double>& h, const GptqOptions& opt = {});

// e(Q) = sum_o (w_o - q_o)^T H (w_o - q_o) in double, q as the kernels see it (QuantMatrix::at);
// q == nullptr: e(0) = sum_o w_o^T H w_o, the output's own energy (2 ||X W^T||_F^2).
double quadratic_error(const float* w, const QuantMatrix* q, int64_t rows, int64_t cols, const std::vector<double>& h);

}  // namespace trident::quant
