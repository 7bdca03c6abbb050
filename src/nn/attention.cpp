// Self-attention module forward/backward (see attention.h).
#include "nn/attention.h"

#include <cstring>

#include "core/check.h"
#include "kernels/kernels.h"

namespace trident::nn {

Attention::Attention(const ParameterSet& ps, const TpContext& tp, AttentionHeads heads, ColumnParallelLinear qkv,
                     RowParallelLinear out)
    : tp_(tp), heads_(heads), qkv_(std::move(qkv)), out_(std::move(out)) {
  TRI_CHECK(qkv_.out_width() == heads_.QKV() && out_.in_width() == heads_.Q(),
            "attention: projections of width {} / {} for {} query and {} key/value heads of {}",
            qkv_.out_width(), out_.in_width(), heads_.NH, heads_.NKV, heads_.HS);
  if (qkv_.size() == 3) kv_replicas_ = ps.info(qkv_.id(1)).tp_replicas;
}

AttentionActivations Attention::make_activations(MemoryTracker& tracker, int64_t B, int64_t T,
                                                 bool save_core, kernels::Precision storage) const {
  const auto A = MemCategory::kActivations;
  const auto N = static_cast<std::size_t>(B * T);
  AttentionActivations a;
  a.qkv = FloatBuffer(tracker, A, N * static_cast<std::size_t>(heads_.QKV()));
  if (save_core) a.att = FloatBuffer(tracker, A, static_cast<std::size_t>(core_floats(heads_, B, T)));
  a.atty = SavedOperand(tracker, storage, B * T * heads_.Q());
  return a;
}

void Attention::core_forward(float* out, float* att, const float* qkv, int64_t B, int64_t T) const {
  if (heads_.NKV == heads_.NH && heads_.rope_theta == 0.0) {
    kernels::attention_forward(out, att, qkv, B, T, heads_.Q(), heads_.NH);
  } else {
    kernels::attention_gqa_forward(out, att, qkv, B, T, heads_.NH, heads_.NKV, heads_.HS);
  }
}

void Attention::recompute_core(AttentionActivations& a, float* discard, int64_t B, int64_t T) const {
  // qkv was saved after rotary, so the core follows from it alone.
  core_forward(discard, a.att.data(), a.qkv.data(), B, T);
}

void Attention::forward(kernels::MatmulEngine& mm, const ParameterSet& ps, SharedScratch& s,
                        AttentionActivations& a, const AttentionScratch& g, float* out, kernels::ActOperand in,
                        int64_t B, int64_t T) const {
  const int64_t N = B * T;
  qkv_.forward(mm, ps, a.qkv.data(), in, N, g.work, s.lora.data());
  if (heads_.rope_theta != 0.0) {
    // Queries and keys are the first NH + NKV heads of each packed row.
    kernels::rope_forward(a.qkv.data(), B, T, heads_.NH + heads_.NKV, heads_.HS, heads_.QKV(),
                          static_cast<float>(heads_.rope_theta));
  }
  // The attention output goes through datty (free until backward) when saved in 16 bits.
  float* atty = a.atty.target(g.datty);
  core_forward(atty, a.att.data(), a.qkv.data(), B, T);
  a.atty.store(atty, N * heads_.Q());
  out_.forward(mm, ps, tp_, s, out, a.atty.operand(), N);
}

void Attention::backward(kernels::MatmulEngine& mm, ParameterSet& ps, SharedScratch& s,
                         const AttentionActivations& a, const AttentionScratch& g, float* dinp, const float* dout,
                         kernels::ActOperand in, int64_t B, int64_t T) const {
  const int64_t N = B * T;
  out_.backward(mm, ps, tp_, s, g.datty, dout, a.atty.operand(), N);
  if (heads_.NKV == heads_.NH && heads_.rope_theta == 0.0) {
    kernels::attention_backward(g.dqkv, g.datty, a.qkv.data(), a.att.data(), B, T, heads_.Q(), heads_.NH);
  } else {
    kernels::attention_gqa_backward(g.dqkv, g.datty, a.qkv.data(), a.att.data(), B, T, heads_.NH, heads_.NKV,
                                    heads_.HS);
  }
  if (heads_.rope_theta != 0.0) {
    kernels::rope_backward(g.dqkv, B, T, heads_.NH + heads_.NKV, heads_.HS, heads_.QKV(),
                           static_cast<float>(heads_.rope_theta));
  }
  // With kv replicas the k/v gradients must receive this micro-batch's share summed over the
  // ranks holding the head: set aside what they hold, let the projection accumulate the share
  // into zeroed gradients, then put back held + summed share.
  const std::size_t kv_bytes = static_cast<std::size_t>(heads_.KV() * qkv_.in_width()) * sizeof(float);
  // (A frozen projection, a LoRA base, has no k/v gradient to sum.)
  const bool sum_replicas = kv_replicated() && ps.grad(qkv_.id(1)) != nullptr;
  if (sum_replicas) {
    for (std::size_t j = 0; j < 2; ++j) {
      float* grad = ps.grad(qkv_.id(1 + j));
      std::memcpy(g.kv_part + j * (kv_bytes / sizeof(float)), grad, kv_bytes);
      std::memset(grad, 0, kv_bytes);
    }
  }
  qkv_.backward(mm, ps, dinp, g.dqkv, in, N, g.work, s.lora.data());
  if (sum_replicas) sum_kv_replicas(ps, g);
}

void Attention::sum_kv_replicas(ParameterSet& ps, const AttentionScratch& g) const {
  // Every rank writes its share into its head's slot of a buffer holding all heads; the sum
  // over tp then holds, in each slot, the sum over the ranks sharing that head.
  const int64_t slot = heads_.HS * qkv_.in_width(), H = heads_.kv_heads_total;
  const auto bytes = static_cast<std::size_t>(slot) * sizeof(float);
  float* sum = g.kv_sum;
  std::memset(sum, 0, static_cast<std::size_t>(2 * H * slot) * sizeof(float));
  const int64_t head = tp_.rank / kv_replicas_;
  float* dk = ps.grad(qkv_.id(1));
  float* dv = ps.grad(qkv_.id(2));
  std::memcpy(sum + head * slot, dk, bytes);
  std::memcpy(sum + (H + head) * slot, dv, bytes);
  tp_.allreduce_sum(sum, 2 * H * slot);
  std::memcpy(dk, sum + head * slot, bytes);
  std::memcpy(dv, sum + (H + head) * slot, bytes);
  kernels::accumulate(dk, g.kv_part, slot);
  kernels::accumulate(dv, g.kv_part + slot, slot);
}

}  // namespace trident::nn
