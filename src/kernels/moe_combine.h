// Mixture-of-experts host math around the expert matmuls: combining each token's k routed
// outputs, their backward, the router's softmax backward (with the aux and z-loss terms) and
// the per-sequence balance statistics. Layout as in nn/moe_mlp.h: token n's k choices are
// pairs n*K + j (j in ascending expert id), row_of[pair] is the pair's routed row (-1 when
// dropped), token_of[row] its token; y / dy rows are C wide.
// Every sum runs in one fixed order (j, then rows, then tokens), and the loops parallelised
// over tokens or experts write disjoint outputs, so results do not depend on the thread count.
#pragma once

#include <cstdint>

namespace trident::kernels {

// out (N, C) = sum over the kept pairs j of weights[n K + j] * y[row_of[n K + j]], in j order.
void moe_combine_forward(float* out, const float* y, const int32_t* row_of, const float* weights, int64_t N,
                         int64_t K, int64_t C);

// dweights (N K) = <dout_n, y_row> summed in fp64 (0 for a dropped pair); dy[row] (C) =
// weights[pair] * dout_n for each kept pair (dropped pairs write no row).
void moe_combine_backward(float* dweights, float* dy, const float* dout, const float* y, const int32_t* row_of,
                          const float* weights, int64_t N, int64_t K, int64_t C);

// dx (N, C) = 0, then += drows[r] into row token_of[r] for r = 0..R-1 in order: each token's k
// input gradients summed in expert order.
void moe_scatter_add_rows(float* dx, const float* drows, const int32_t* token_of, int64_t R, int64_t N, int64_t C);

// How the router's scores became routing weights (nn/moe_router.h): w_j = scale p_j / S over the
// k chosen when `normalized`, else scale p_j; p the softmax of the logits, or (sigmoid) each
// logit's sigmoid, whose aux-loss P_e then reads p_e / sum_e' p_e'.
struct RouterRule {
  bool normalized = true;
  bool sigmoid = false;
  double scale = 1.0;
};

// The router's logit gradients dlogit (N, E), in fp64, from the routing-weight gradients
// dweights (N K): through the top-k renormalisation and scale (rule), plus the aux loss's
// aux_coef * f_e / T (f_e = E / (K T) * seq_counts[b E + e], b = n / T; under sigmoid through
// the normalisation p_e / sum p), through the softmax (or each sigmoid: p_e (1 - p_e)), plus the
// z-loss's 2 z_coef lse_n p_e (softmax only).
void moe_router_logit_grad(double* dlogit, const float* probs, const int32_t* experts, const float* dweights,
                           const float* weights, const int32_t* seq_counts, const double* lse, int64_t N, int64_t T,
                           int64_t E, int64_t K, RouterRule rule, double aux_coef, double z_coef);

// dwr (E, C) += dlogit^T x when dwr is not null, and dx (N, C) += dlogit wr when dx is not null; sums in fp64.
void moe_router_backward_products(float* dwr, float* dx, const double* dlogit, const float* x, const float* wr,
                                  int64_t N, int64_t E, int64_t C);

// seq_counts (B, E) = the pairs of each sequence routed to each expert (dropped ones included:
// the choice is what the aux loss balances); returns the sum over sequences of
// sum_e f_e P_e with f_e = E / (K T) * count and P_e the sequence's mean probability of e
// (`normalize`: of p_e / sum_e' p_e', the sigmoid router's affinities).
double moe_sequence_balance(int32_t* seq_counts, const int32_t* experts, const float* probs, int64_t B, int64_t T,
                            int64_t E, int64_t K, bool normalize = false);

}  // namespace trident::kernels
