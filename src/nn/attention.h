// Causal self-attention as a module: the fused q|k|v column-parallel projection, the attention
// core and the row-parallel output projection, forward and backward over one tp region (input:
// every token row, gathered; output: this rank's summed rows, see row_parallel_linear.h).
//   MHA (GPT-2): one Conv1D c_attn with bias giving [q | k | v], NKV == NH, no rotary;
//   GQA (Llama): q_proj, k_proj, v_proj as one fused run (column_parallel_linear.h), rotary
//     embeddings (rotate-half, rope_theta) on the query and key heads, query head h reading
//     key/value head h / (NH / NKV) (Hugging Face's repeat_kv).
// Each tp rank holds whole heads. When tp exceeds the key/value heads, tp / NKV ranks hold the
// same head (TpSplit::kKvHeads): each computes its query heads' share of that head's weight
// gradient, and backward sums the shares over the ranks holding it before they accumulate.
#pragma once

#include <cstdint>

#include "core/memory.h"
#include "kernels/matmul_engine.h"
#include "nn/column_parallel_linear.h"
#include "nn/layer.h"
#include "nn/parameters.h"
#include "nn/row_parallel_linear.h"
#include "nn/saved_operand.h"
#include "nn/tensor_parallel.h"

namespace trident::nn {

// Local head counts of one tp rank and the rotary base (0: no rotary embeddings).
struct AttentionHeads {
  int64_t NH = 0, NKV = 0, HS = 0;
  int64_t kv_heads_total = 0;  // the model's key/value heads (for the replica sum)
  double rope_theta = 0.0;
  int64_t Q() const { return NH * HS; }
  int64_t KV() const { return NKV * HS; }
  int64_t QKV() const { return Q() + 2 * KV(); }
};

struct AttentionActivations {
  FloatBuffer qkv;   // (N, QKV) packed rows, after rotary
  FloatBuffer att;   // (B, NH, T, T) softmax probabilities (the attention core)
  SavedOperand atty;  // (N, Q): read by backward only as the out projection's operand
};

// The module's part of the layer's gradient scratch (pointers into SharedScratch::layer).
struct AttentionScratch {
  float* dqkv = nullptr;     // (N, QKV)
  float* datty = nullptr;    // (N, Q)
  float* work = nullptr;     // the qkv projection's work_floats(N)
  float* kv_part = nullptr;  // (2 KV C) kv replication only: the gradients accumulated so far
  float* kv_sum = nullptr;   // (2 kv_heads_total HS C) kv replication only: every head's slot
};

class Attention {
 public:
  Attention(const ParameterSet& params, const TpContext& tp, AttentionHeads heads, ColumnParallelLinear qkv,
            RowParallelLinear out);

  const AttentionHeads& heads() const { return heads_; }
  const ColumnParallelLinear& qkv_projection() const { return qkv_; }
  // `storage`: how atty is saved (saved_operand.h); qkv and the core stay fp32.
  AttentionActivations make_activations(MemoryTracker& tracker, int64_t B, int64_t T, bool save_core,
                                        kernels::Precision storage) const;
  static int64_t activation_bytes(const AttentionHeads& h, int64_t B, int64_t T, kernels::Precision storage) {
    return 4 * B * T * h.QKV() + SavedOperand::bytes(storage, B * T * h.Q()) + 4 * core_floats(h, B, T);
  }
  static int64_t core_floats(const AttentionHeads& h, int64_t B, int64_t T) { return B * h.NH * T * T; }
  // Scratch floats for N tokens, given the qkv projection's work floats and the input width C.
  static int64_t scratch_floats(const AttentionHeads& h, int64_t N, int64_t work, bool kv_replicated, int64_t C) {
    int64_t f = N * (h.QKV() + h.Q()) + work;
    if (kv_replicated) f += 2 * h.KV() * C + 2 * h.kv_heads_total * h.HS * C;
    return f;
  }
  bool kv_replicated() const { return kv_replicas_ > 1; }

  // out (Nl, C) = attention of in (N, C), summed over tp (plus the output bias).
  void forward(kernels::MatmulEngine& mm, const ParameterSet& params, SharedScratch& s, AttentionActivations& a,
               const AttentionScratch& g, float* out, kernels::ActOperand in, int64_t B, int64_t T) const;
  // dinp (N, C) = this rank's share of d/d in (overwritten), from dout (Nl, C).
  void backward(kernels::MatmulEngine& mm, ParameterSet& params, SharedScratch& s, const AttentionActivations& a,
                const AttentionScratch& g, float* dinp, const float* dout, kernels::ActOperand in, int64_t B,
                int64_t T) const;
  // Refills a.att from a.qkv with forward's kernel; the attention output it also writes goes
  // to `discard` (N, Q).
  void recompute_core(AttentionActivations& a, float* discard, int64_t B, int64_t T) const;

 private:
  void core_forward(float* out, float* att, const float* qkv, int64_t B, int64_t T) const;
  // The k/v weight gradients of this micro-batch, summed over the ranks holding the same head.
  void sum_kv_replicas(ParameterSet& params, const AttentionScratch& g) const;

  TpContext tp_;
  AttentionHeads heads_;
  ColumnParallelLinear qkv_;
  RowParallelLinear out_;
  int kv_replicas_ = 1;
};

}  // namespace trident::nn
