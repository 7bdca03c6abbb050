// Vocab-parallel softmax cross-entropy (Megatron-LM's vocab_parallel_cross_entropy) in three
// local passes; the caller combines the per-row partial results across the tensor-parallel
// group between them (max, then sum), so the full (N, V) logits never exist on one rank.
//
//   rank r holds logits (N, Vl) for global columns [vocab_begin, vocab_begin + Vl); columns
//   with global index >= V are padding and are masked (no probability, zero gradient).
//   1. row_max        -> allreduce(max) over tp
//   2. exp_sum        -> allreduce(sum) over tp of [sumexp (N) | target_logit (N)]
//   3. loss_grad      -> losses, and logits overwritten by (softmax - onehot) * dloss
// With Vl == Vp and vocab_begin 0 (tp = 1) the three passes compute what
// crossentropy_softmax_forward_backward computes in one. Shape legend as in kernels.h.
#pragma once

#include <cstdint>

namespace trident::kernels {

// Columns of this rank's slice that are real tokens: clamp(V - vocab_begin, 0, Vl).
int64_t vocab_real_columns(int64_t V, int64_t vocab_begin, int64_t Vl);

// rowmax (N) = max over the real local columns of logits (N, Vl); -inf when there are none.
void vocab_parallel_row_max(float* rowmax, const float* logits, int64_t N, int64_t Vl,
                            int64_t real_cols);

// With rowmax the global row max: logits[:, :real_cols] <- exp(logits - rowmax) in place,
// sums (2N): sums[n] = sum of those exps (this rank's share), sums[N + n] = the target's raw
// logit minus rowmax if this rank owns targets[n], else 0. Targets < 0 contribute nothing.
void vocab_parallel_exp_sum(float* sums, float* logits, const float* rowmax,
                            const int32_t* targets, int64_t N, int64_t Vl, int64_t vocab_begin,
                            int64_t real_cols);

// With sums reduced over the group: losses[n] = log(sum) - (target logit - max) (0 for
// targets < 0) and logits (holding exps) overwritten by dlogits = (softmax - onehot) * dloss,
// padding columns 0, so one copy of the logits' gradient ever exists.
void vocab_parallel_loss_grad(float* losses, float* logits, const float* sums,
                              const int32_t* targets, int64_t N, int64_t Vl, int64_t vocab_begin,
                              int64_t real_cols, float dloss);

// Checks every target is < V (throws trident::Error naming the row otherwise).
void vocab_parallel_check_targets(const int32_t* targets, int64_t N, int64_t V);

// out (rows, C) += wpe rows of the positions of global token rows [row_begin, row_begin +
// rows) of a (B, T) batch (position = row % T): the sequence-parallel position embedding.
void position_embedding_forward_rows(float* out, const float* wpe, int64_t row_begin,
                                     int64_t rows, int64_t T, int64_t C);

}  // namespace trident::kernels
