// A Mixtral-style sparse mixture-of-experts MLP (Hugging Face MixtralSparseMoeBlock), the
// module the Llama block (nn/llama_block.h, through nn/mlp.h) uses in place of its dense SwiGLU
// MLP when ModelConfig::n_experts > 0:
//   logits = x Wr^T (fp32, Wr [E, C] the router, no bias), p = softmax(logits) over E,
//   S = the top k experts of p (ties: the lowest expert id), w_j = p_j / sum_S p (or p_j when
//   norm_topk_prob is off), out = sum_{j in S, in expert-id order} w_j * expert_j(x),
//   expert_j(x) = w2_j (silu(w1_j x) * w3_j x).
// Dropless: every token reaches its k experts; each expert runs one matmul over the variable
// number of token rows routed to it (grouped per expert).
//
// Layout independence. Each token's logits are a fixed-order dot product (a double sum over
// C, then rounded to fp32), never an sgemm whose blocking depends on how many rows share the
// call, so a token's routing depends only on its own input row, whatever the micro-batch,
// dp or tp split. Combining in expert-id order fixes the sum order of each token's k outputs.
//
// Load balancing (docs/moe.md): per sequence b of T tokens, f_e = E / (k T) * (tokens of b
// routed to e), P_e = mean over b's tokens of p_e, aux_b = sum_e f_e P_e. The objective adds
// aux_weight * sum_b aux_b, aux_weight = coef / (layers * sequences of the global batch), so
// the sum over every layer and sequence of the world is the average. f is a count (no
// gradient); d aux_b / d p[t, e] = f_e / T.
//
// Tensor parallelism: w1/w3 column-parallel and w2 row-parallel like the dense MLP (each rank
// computes partial expert outputs, summed by the block's tp_exit); the router is replicated, so
// every tp rank routes alike. Backward sums the routing-weight gradients <dout, y_j> over tp (y_j
// is a partial sum there) and adds the router's input gradient on tp rank 0 only (the block's
// tp_enter_backward sums the input gradient over tp).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/memory.h"
#include "kernels/matmul_engine.h"
#include "nn/model_config.h"
#include "nn/parameters.h"
#include "nn/tensor_parallel.h"

namespace trident::nn {

// One micro-batch's routing and expert activations. R = N k routed rows, grouped by expert
// (expert 0's rows in token order, then expert 1's, ...); Il = I / tp.
struct MoeActivations {
  FloatBuffer probs;        // (N, E) router softmax
  FloatBuffer weights;      // (N, k) routing weights, by ascending expert id
  FloatBuffer h1, h3, act;  // (R, Il) w1 x, w3 x, silu(h1) * h3
  FloatBuffer y;            // (R, C) expert outputs (partial sums over tp)
  mutable FloatBuffer xs, dys;  // (R, C) scratch: gathered inputs, output gradients (backward)
  std::vector<int32_t> experts;   // (N, k) the chosen experts, ascending
  std::vector<int32_t> row_of;    // (N, k) the routed row of (token, j)
  std::vector<int32_t> token_of;  // (R) the token of each routed row
  std::vector<int64_t> offsets;   // (E + 1) first routed row of each expert
  std::vector<int32_t> seq_counts;  // (B, E) tokens of sequence b routed to e
  double aux_sum = 0.0;     // sum over the micro-batch's sequences of aux_b (unweighted)

  MoeActivations(MemoryTracker& tracker, const ModelConfig& cfg, int tp, int64_t N);
  static int64_t floats(const ModelConfig& cfg, int tp, int64_t N);
};

class MoeMlp {
 public:
  // Registers nothing: the block registers the layer's declared parameters; this finds its own.
  MoeMlp(const ParameterSet& params, const ModelConfig& cfg, const TpContext& tp, int layer);

  // partial (N, C) = this rank's share of the MoE output for x (N, C), every token row.
  // The experts' matmuls go through `mm` (the model's precision); the router stays fp32.
  void forward(kernels::MatmulEngine& mm, const ParameterSet& params, MoeActivations& a, float* partial, const float* x, int64_t B,
               int64_t T) const;
  // dx (N, C) = (overwritten) this rank's share of d/dx, given dout (N, C) = d/d output (full).
  // Parameter gradients accumulate; the aux loss's gradient is aux_weight per unit of aux_b.
  void backward(kernels::MatmulEngine& mm, ParameterSet& params, const MoeActivations& a, float* dx, const float* dout, const float* x,
                int64_t B, int64_t T, float aux_weight) const;

 private:
  ModelConfig cfg_;
  TpContext tp_;
  int router_ = -1;
  std::vector<int> w1_, w2_, w3_;  // per expert
};

}  // namespace trident::nn
