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
// Selection bias and capacity (nn/moe_router.h): the top k may be chosen by p + b (the weights
// stay unbiased), and a pair over its expert's per-sequence capacity is dropped (no routed row,
// contributes zero, weights not renormalised).
//
// Load balancing (docs/moe.md): per sequence b of T tokens, f_e = E / (k T) * (tokens of b
// routed to e), P_e = mean over b's tokens of p_e, aux_b = sum_e f_e P_e. The objective adds
// aux_weight * sum_b aux_b, aux_weight = coef / (layers * sequences of the global batch), so
// the sum over every layer and sequence of the world is the average. f is a count (no
// gradient); d aux_b / d p[t, e] = f_e / T.
//
// Router z-loss (ST-MoE, Zoph et al. 2022; Megatron's --moe-z-loss-coeff): per token n,
// z_n = (log sum_e exp(logit_ne))^2, which keeps the router's logits small. The objective adds
// z_weight * sum_n z_n, z_weight = router_z_loss_coef / (layers * tokens of the global batch):
// the mean over every layer and token, whatever the layout. d z_n / d logit_ne = 2 lse_n p_ne.
//
// Tensor parallelism: w1/w3 column-parallel and w2 row-parallel like the dense MLP (each rank
// computes partial expert outputs, summed by the block's tp_exit); the router is replicated, so
// every tp rank routes alike. Backward sums the routing-weight gradients <dout, y_j> over tp (y_j
// is a partial sum there) and adds the router's input gradient on tp rank 0 only (the block's
// tp_enter_backward sums the input gradient over tp).
//
// Expert parallelism (EpContext in the TpContext, ep > 1): this rank holds experts
// [q E/P, (q+1) E/P) of P = ep ranks. Every rank routes its own tokens (the router is
// replicated) and groups the routed rows by expert as above, so the rows for owner q are one
// contiguous range; per-expert row counts are exchanged first, then the rows (all_to_allv).
// The owner runs each local expert over its rows from source rank 0 (in that rank's token
// order), then from rank 1, ... (one grouped matmul per expert), and sends each source its
// outputs back in the order they came, so every source combines its tokens' k outputs in
// expert-id order exactly as at ep 1. Backward is the conjugate: output-gradient rows go to
// the owners, input-gradient rows come back and are scatter-added in expert order. An expert's
// weight gradient so holds the sum over the ep group's tokens; the engine sums it over the
// expert-data-parallel group (the ranks holding the same experts), never scaled by ep.
// With tp the ep group is the ranks of one tp coordinate: each exchanges its tp slice's
// partial outputs and the block's tp_exit sums them as at ep 1.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/memory.h"
#include "kernels/matmul_engine.h"
#include "nn/moe_loss.h"
#include "nn/model_config.h"
#include "nn/parameters.h"
#include "nn/saved_operand.h"
#include "nn/tensor_parallel.h"

namespace trident::nn {

// One micro-batch's routing and expert activations. R = N k routed rows, grouped by expert
// (expert 0's rows in token order, then expert 1's, ...); Il = I / tp.
struct MoeActivations {
  FloatBuffer probs;        // (N, E) router softmax
  FloatBuffer weights;      // (N, k) routing weights, by ascending expert id
  FloatBuffer h1, h3;       // (R, Il) w1 x, w3 x (SwiGLU backward reads them as values)
  // (R, Il) silu(h1) * h3: backward reads it only as w2's weight-gradient operand, so under
  // bf16/fp16 it is saved in the matmuls' 16 bits (nn/saved_operand.h), bitwise as fp32.
  SavedOperand act;
  FloatBuffer y;            // (R, C) expert outputs (partial sums over tp; backward reads them as values)
  // (R, C) the gathered input rows, an operand of w1/w3's products only (16 bits likewise;
  // at ep > 1 the 16-bit words sent to the owners, whose rows are xo), and the output
  // gradients (backward).
  mutable SavedOperand xs;
  mutable FloatBuffer dys;
  std::vector<int32_t> experts;   // (N, k) the chosen experts, ascending
  std::vector<int32_t> row_of;    // (N, k) the routed row of (token, j); -1: dropped (capacity)
  std::vector<uint8_t> keep;      // (N, k) 1: within its expert's capacity (nn/moe_router.h)
  int64_t dropped = 0;            // pairs over capacity in this micro-batch
  std::vector<int32_t> token_of;  // (R) the token of each routed row
  std::vector<int64_t> offsets;   // (E + 1) first routed row of each expert
  std::vector<int32_t> seq_counts;  // (B, E) tokens of sequence b routed to e
  uint64_t routing_hash = 0;        // nn::routing_hash of experts and keep
  double aux_sum = 0.0;     // sum over the micro-batch's sequences of aux_b (unweighted)
  std::vector<double> lse;  // (N) log sum_e exp(logit_ne) of each token (the z-loss's)
  double z_sum = 0.0;       // sum over the micro-batch's tokens of lse^2 (unweighted)
  // ep > 1, the owner side: rows received from every source for this rank's El experts,
  // counts[s * El + l] from source s for local expert l, kept in expert-major order (expert
  // l's rows from source 0, then 1, ...); h1/h3/act above then hold these rows (grown on
  // demand, as the load is only known after routing).
  std::vector<int64_t> send_counts, recv_counts;  // (P * El) routed rows
  std::vector<int64_t> owner_offsets;  // (El + 1) first expert-major row of each local expert
  // (Ro, C) the received input rows, expert-major: w1/w3's operand only, so in 16 bits like xs
  // (sent as those words: the exchange of inputs moves half the bytes, bitwise the same).
  SavedOperand xo;
  mutable FloatBuffer ex, yo;  // (max(R, Ro), C) exchange scratch (fp32: outputs, gradients)

  // Grows `b` to at least n floats (contents lost), tracked like the rest.
  void ensure(FloatBuffer& b, std::size_t n) const;
  void ensure(SavedOperand& b, int64_t n) const { b.ensure(*tracker_, n); }

  // `storage`: how the matmul-only operands (act, xs) are saved (Model::operand_storage).
  MoeActivations(MemoryTracker& tracker, const ModelConfig& cfg, int tp, int64_t N, kernels::Precision storage);
  // Bytes the constructor allocates (before any ep > 1 growth).
  static int64_t bytes(const ModelConfig& cfg, int tp, int64_t N, kernels::Precision storage);

 private:
  MemoryTracker* tracker_ = nullptr;
};

class MoeMlp {
 public:
  // Registers nothing: the block registers the layer's declared parameters; this finds its own.
  MoeMlp(const ParameterSet& params, const ModelConfig& cfg, const TpContext& tp, int layer);
  // The layer's aux-free selection bias (E floats, owned by the model; nn/moe_router.h), or null.
  void set_router_bias(const float* bias) { bias_ = bias; }

  // partial (N, C) = this rank's share of the MoE output for x (N, C), every token row.
  // The experts' matmuls go through `mm` (the model's precision); the router stays fp32.
  void forward(kernels::MatmulEngine& mm, const ParameterSet& params, MoeActivations& a, float* partial, const float* x, int64_t B,
               int64_t T) const;
  // dx (N, C) = (overwritten) this rank's share of d/dx, given dout (N, C) = d/d output (full).
  // Parameter gradients accumulate; the aux loss's gradient is weights.aux per unit of aux_b,
  // the z-loss's weights.z per unit of z_n.
  void backward(kernels::MatmulEngine& mm, ParameterSet& params, const MoeActivations& a, float* dx, const float* dout, const float* x,
                int64_t B, int64_t T, const MoeLossWeights& weights) const;

 private:
  // The local experts (all of them at ep 1) over grouped rows: expert l's rows are
  // [offsets[l], offsets[l+1]) of x/h1/h3/act/y.
  void experts_forward(kernels::MatmulEngine& mm, const ParameterSet& ps, const int64_t* offsets, kernels::ActOperand x,
                       float* h1, float* h3, SavedOperand& act, float* y) const;
  // dxr (rows, C) = each row's input gradient; weight gradients accumulate.
  void experts_backward(kernels::MatmulEngine& mm, ParameterSet& ps, const int64_t* offsets, kernels::ActOperand x,
                        const float* h1, const float* h3, kernels::ActOperand act, const float* dy, float* dxr) const;
  // ep > 1: rows of `row_bytes` (C floats, or C 16-bit words) between the sources' layout
  // (grouped by source, then local expert) and the owner's (by local expert, then source).
  void to_expert_major(const MoeActivations& a, const void* from, void* to, int64_t row_bytes) const;
  void to_source_major(const MoeActivations& a, const void* from, void* to, int64_t row_bytes) const;
  // ep > 1: element counts of the rows each rank sends (by_sender: a.send_counts) or receives.
  std::vector<int64_t> exchange_elems(const std::vector<int64_t>& row_counts) const;

  ModelConfig cfg_;
  TpContext tp_;
  EpContext ep_;
  int local_ = 0, first_ = 0;  // local experts [first_, first_ + local_)
  int router_ = -1;
  const float* bias_ = nullptr;  // (E) selection bias, or null
  std::vector<int> w1_, w2_, w3_;  // per local expert
};

}  // namespace trident::nn
