// CPU math for the transformer: forward and backward of every op, as free functions over raw
// fp32 arrays (llm.c style). Argument order: outputs, saved-for-backward, inputs, weights, sizes.
// Shape legend: N = rows (B*T), B batch, T sequence, C channels, OC output channels,
// NH heads, HS head size (C / NH), V vocabulary rows held by this rank.
//
// Gradient conventions (these make micro-batching and residual streams free):
//   * parameter gradients (dweight, dbias, dwte, dwpe) ACCUMULATE (+=);
//   * input gradients are OVERWRITTEN (=) unless the function says "accumulates into dinp".
// Parallelism: OpenMP inside each kernel, BLAS threads for sgemm. Kernels never allocate
// per call except where documented (attention's per-thread scratch).
#pragma once

#include <cstdint>

#include "kernels/half.h"

namespace trident::kernels {

// Threads used by BLAS and OpenMP kernels (both set together).
void set_num_threads(int threads);
int num_threads();

// ---- matmul, weight in Hugging Face Conv1D layout [in, out] ----
// out (N, OC) = inp (N, C) @ weight (C, OC) + bias (OC); bias may be null.
void matmul_forward(float* out, const float* inp, const float* weight, const float* bias,
                    int64_t N, int64_t C, int64_t OC);
// dinp (N, C) = dout @ weight^T (skipped if dinp is null);
// dweight (C, OC) += inp^T @ dout; dbias (OC) += column sums of dout (skipped if null).
void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                     const float* inp, const float* weight, int64_t N, int64_t C, int64_t OC);

// ---- matmul against a row-major table [V, C] (the tied LM head: logits = x @ wte^T) ----
// out (N, V) = inp (N, C) @ table (V, C)^T.
void matmul_forward_nt(float* out, const float* inp, const float* table, int64_t N, int64_t C,
                       int64_t V);
// dinp (N, C) = dout (N, V) @ table (V, C) (skipped if null); dtable (V, C) += dout^T @ inp.
void matmul_backward_nt(float* dinp, float* dtable, const float* dout, const float* inp,
                        const float* table, int64_t N, int64_t C, int64_t V);

// ---- embeddings ----
// out (N, C) = table[ids[n] - row_begin] for ids in [row_begin, row_begin + rows), else 0
// (rows outside belong to another tensor-parallel rank). table is (rows, C).
void embedding_forward(float* out, const int32_t* ids, const float* table, int64_t N,
                       int64_t C, int64_t row_begin, int64_t rows);
// dtable (rows, C) += scatter of dout rows to their ids (ids outside the range ignored).
// Deterministic: the result does not depend on the thread count.
void embedding_backward(float* dtable, const float* dout, const int32_t* ids, int64_t N,
                        int64_t C, int64_t row_begin, int64_t rows);
// out (B, T, C) += wpe (T, C) broadcast over B.
void position_embedding_forward(float* out, const float* wpe, int64_t B, int64_t T, int64_t C);
// dwpe (T, C) += sum over B of dout (B, T, C).
void position_embedding_backward(float* dwpe, const float* dout, int64_t B, int64_t T,
                                 int64_t C);

// ---- LayerNorm over the last dimension, eps 1e-5 ----
// out (N, C), mean (N), rstd (N) saved for backward.
void layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                       const float* weight, const float* bias, int64_t N, int64_t C);
// Accumulates into dinp (N, C) (+=); dweight, dbias (C) += (each skipped when null: a frozen norm).
void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean,
                        const float* rstd, int64_t N, int64_t C);

// ---- RMSNorm over the last dimension (Llama: weight only, no mean subtraction) ----
// out (N, C) = inp * rstd * weight with rstd (N) = 1 / sqrt(mean(inp^2) + eps), saved.
void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int64_t N, int64_t C,
                     float eps);
// Accumulates into dinp (N, C) (+=); dweight (C) += (skipped when null: a frozen norm).
void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                      const float* rstd, int64_t N, int64_t C);

// ---- rotary position embedding, Hugging Face's rotate-half convention ----
// For each of `heads` heads of HS channels (HS even) in rows of x (N = B*T rows, row stride
// `stride`, head k at columns k*HS; row n is position pos0 + n % T), with
// inv_freq_i = theta^(-2i/HS) and a_i = position * inv_freq_i for i < HS/2:
//   x[i] <- x[i] cos a_i - x[i + HS/2] sin a_i,  x[i + HS/2] <- x[i + HS/2] cos a_i + x[i] sin a_i.
// In place. The backward applies the inverse rotation (the transpose) to the gradient, in place.
void rope_forward(float* x, int64_t B, int64_t T, int64_t heads, int64_t HS, int64_t stride, float theta,
                  int64_t pos0 = 0);
void rope_backward(float* dx, int64_t B, int64_t T, int64_t heads, int64_t HS, int64_t stride, float theta,
                   int64_t pos0 = 0);

// ---- SwiGLU (Llama's MLP activation) ----
// out (n) = silu(gate) * up, silu(g) = g * sigmoid(g).
void swiglu_forward(float* out, const float* gate, const float* up, int64_t n);
// dgate = dout * up * silu'(gate), dup = dout * silu(gate) (both overwritten).
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n);
// The same on row-packed operands, as one fused gate/up projection produces them: gu (N, 2I)
// rows [gate | up], out (N, I); dgu (N, 2I) = [dgate | dup] (overwritten, must not alias dout).
void swiglu_packed_forward(float* out, const float* gu, int64_t N, int64_t I);
void swiglu_packed_backward(float* dgu, const float* dout, const float* gu, int64_t N, int64_t I);

// ---- GELU, tanh approximation (GPT-2's gelu_new) ----
void gelu_forward(float* out, const float* inp, int64_t n);
// dinp = gelu'(inp) * dout. dinp may alias dout.
void gelu_backward(float* dinp, const float* inp, const float* dout, int64_t n);

// ---- column blocks (a fused projection's packed rows <-> separate products) ----
// Rows n < N: dst[n * dst_stride + j] = src[n * src_stride + j] for j < width.
void copy_columns(float* dst, int64_t dst_stride, const float* src, int64_t src_stride, int64_t N,
                  int64_t width);

// ---- residual ----
// out = a + b (n elements); out may alias a or b.
void residual_forward(float* out, const float* a, const float* b, int64_t n);
// dst += src (n elements): gradient shares and partial sums.
void accumulate(float* dst, const float* src, int64_t n);
// x *= s (n elements): a LoRA adapter's alpha / r.
void scale(float* x, float s, int64_t n);
// Rows n < N: dst[n * dst_stride + j] += src[n * src_stride + j] for j < width (a block of a
// fused projection's packed rows receiving its adapter's product).
void accumulate_columns(float* dst, int64_t dst_stride, const float* src, int64_t src_stride, int64_t N,
                        int64_t width);
// out (N, C) rows += bias (C): a row-parallel layer's bias, added once after the tp sum.
void add_bias_rows(float* out, const float* bias, int64_t N, int64_t C);

// ---- causal self-attention ----
// qkv (B, T, 3C) laid out [q | k | v], head h at columns h*HS .. h*HS+HS-1 of each part;
// out (B, T, C); att (B, NH, T, T) saved softmax probabilities (upper triangle zero).
// C here is NH * HS of the heads this rank holds.
void attention_forward(float* out, float* att, const float* qkv, int64_t B, int64_t T,
                       int64_t C, int64_t NH);
// dqkv (B, T, 3C) = gradient w.r.t. qkv (overwritten).
void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* att,
                        int64_t B, int64_t T, int64_t C, int64_t NH);

// ---- causal grouped-query attention (Llama; MHA is NKV == NH) ----
// qkv (B, T, (NH + 2 NKV) HS) laid out [q | k | v]: NH query heads, then NKV key and NKV value
// heads; query head h uses key/value head h / (NH / NKV) (Hugging Face's repeat_kv).
// out (B, T, NH HS); att (B, NH, T, T) saved probabilities. attention_forward/backward above
// are the NKV == NH case.
void attention_gqa_forward(float* out, float* att, const float* qkv, int64_t B, int64_t T, int64_t NH,
                           int64_t NKV, int64_t HS);
// dqkv overwritten; each key/value head's gradient sums over its group of query heads.
void attention_gqa_backward(float* dqkv, const float* dout, const float* qkv, const float* att, int64_t B,
                            int64_t T, int64_t NH, int64_t NKV, int64_t HS);

// ---- cross-entropy fused with softmax over the vocabulary ----
// logits (N, Vp) with the first V columns real and the rest padding (ignored).
// Writes losses[n] = -log softmax(logits[n, :V])[targets[n]] and overwrites logits in place
// with dlogits = (softmax - onehot(target)) * dloss (padding columns set to 0), so at most one
// copy of the logits' gradient ever exists. Targets < 0 are ignored (loss 0, gradient 0).
void crossentropy_softmax_forward_backward(float* losses, float* logits, const int32_t* targets,
                                           int64_t N, int64_t V, int64_t Vp, float dloss);

// ---- AdamW on a contiguous range (decoupled weight decay, Loshchilov & Hutter) ----
// t is the 1-based step for bias correction; grads are multiplied by grad_scale first
// (used for clipping). Updates param, m, v in place.
void adamw_update(float* param, const float* grad, float* m, float* v, int64_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int64_t t,
                  float grad_scale);
// The same update reading 16-bit gradients (--grad-dtype bf16|fp16, parallel/grad_shard.h):
// each is widened exactly to fp32 and the arithmetic is the fp32 entry point's, bit for bit
// (the update of widen(grad) through the fp32 entry gives the same bits).
void adamw_update(float* param, const uint16_t* grad, Half grad_type, float* m, float* v, int64_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int64_t t, float grad_scale);

// Sum of squares in double (for the global gradient norm).
double sum_squares(const float* x, int64_t n);
// Of 16-bit values, widened: bitwise sum_squares of their fp32 values (the same chunks, the
// same order).
double sum_squares(const uint16_t* x, Half type, int64_t n);
// Sum in double, element 0 first (the token losses: the same order whatever the threads).
double sum_in_order(const float* x, int64_t n);

}  // namespace trident::kernels
