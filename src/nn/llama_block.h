// One Llama decoder layer exactly as Hugging Face's LlamaDecoderLayer computes it:
//   h = x + o_proj(attn(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1))),  n1 = rmsnorm_1(x)
//   out = h + down_proj(silu(gate_proj(n2)) * up_proj(n2)),                 n2 = rmsnorm_2(h)
// with nn.Linear weights [out, in], no biases, grouped-query attention (query head h uses
// key/value head h / (NH / NKV), as repeat_kv), rotary embeddings in the rotate-half convention.
//
// With ModelConfig::n_experts > 0 (Mixtral) the MLP is the mixture of experts of nn/moe_mlp.h,
// inside the same tensor-parallel region.
//
// Tensor parallel as Megatron: q/k/v and gate/up are column-parallel (whole heads per rank),
// o_proj and down_proj row-parallel; the conjugate functions of nn/tp_region.h bracket the two
// regions, so one body serves the plain and the sequence-parallel path. When tp exceeds the
// key/value heads, tp / NKV ranks hold the same head (TpSplit::kKvHeads): each computes its
// query heads' share of that head's gradient, and backward sums the shares over tp.
#pragma once

#include <cstdint>
#include <memory>
#include <utility>

#include "core/memory.h"
#include "nn/layer.h"
#include "nn/model_config.h"
#include "nn/moe_mlp.h"
#include "nn/parameters.h"
#include "nn/tensor_parallel.h"

namespace trident::nn {

// Local widths on one tp rank: Q = NHl * HS query channels, KV = NKVl * HS key (and value)
// channels, I = intermediate / tp; Nl the sequence-parallel rows (N without it).
struct LlamaBlockActivations final : LayerActivations {
  FloatBuffer n1, rstd1;  // (Nl, C), (Nl)
  FloatBuffer qkv;        // (N, Q + 2 KV) after rotary
  FloatBuffer att;        // (B, NHl, T, T) probabilities
  FloatBuffer atty;       // (N, Q)
  FloatBuffer h;          // (Nl, C) x + attention output
  FloatBuffer n2, rstd2;  // (Nl, C), (Nl)
  FloatBuffer gate, up;   // (N, I)  dense MLP only
  FloatBuffer act;        // (N, I) silu(gate) * up  dense MLP only
  std::unique_ptr<MoeActivations> moe;  // mixture-of-experts MLP only

  // Without save_attention_core, att stays empty (selective recompute).
  LlamaBlockActivations(MemoryTracker& tracker, const ModelConfig& cfg, int tp, int64_t B, int64_t T,
                        int64_t local_rows, bool save_attention_core = true);
  FloatBuffer& attention_core() override { return att; }
  // Floats allocated for one layer, att included (docs/memory.md), and att's share of them.
  static int64_t floats(const ModelConfig& cfg, int tp, int64_t B, int64_t T, int64_t local_rows);
  static int64_t attention_core_floats(const ModelConfig& cfg, int tp, int64_t B, int64_t T);
  // The layer's share of SharedScratch::layer.
  static int64_t scratch_floats(const ModelConfig& cfg, int tp, int64_t N);
};

class LlamaBlock final : public Layer {
 public:
  LlamaBlock(ParameterSet& params, const ModelConfig& cfg, const TpContext& tp, int layer);

  std::unique_ptr<LayerActivations> make_activations(MemoryTracker& tracker, int64_t B, int64_t T,
                                                     int64_t local_rows,
                                                     bool save_attention_core) const override;
  void forward(ParameterSet& params, LayerActivations& acts, float* out, const float* x, int64_t B,
               int64_t T, SharedScratch& scratch) const override;
  void backward(ParameterSet& params, const LayerActivations& acts, SharedScratch& scratch,
                float* dres, const float* x, int64_t B, int64_t T) const override;
  void recompute_attention_core(LayerActivations& acts, int64_t B, int64_t T,
                                SharedScratch& scratch) const override;
  void set_aux_loss_weight(float w) override { aux_weight_ = w; }
  double take_aux_loss_sum() override { return std::exchange(aux_loss_sum_, 0.0); }
  std::vector<int64_t> take_expert_load() override { return std::exchange(expert_load_, {}); }

 private:
  // Sums the key/value weight gradients' shares of this micro-batch over the ranks holding the
  // same head, then adds them to the gradients (kv replication only); `all` is scratch for
  // every head's k and v slots.
  void sum_kv_replicas(ParameterSet& params, const float* dk, const float* dv, float* all) const;

  ModelConfig cfg_;
  TpContext tp_;
  int q_heads_ = 0, kv_heads_ = 0;  // local
  int kv_replicas_ = 1;
  int n1_w_, q_w_, k_w_, v_w_, o_w_, n2_w_, gate_w_ = -1, up_w_ = -1, down_w_ = -1;
  std::unique_ptr<MoeMlp> moe_;  // in place of gate/up/down when the config has experts
  float aux_weight_ = 0.0f;      // the MoE load-balancing loss's weight per sequence
  // Sum of the aux terms of the micro-batches backward ran on: a statistic for the metrics,
  // written by the (const) backward, read and reset by take_aux_loss_sum.
  mutable double aux_loss_sum_ = 0.0;
  mutable std::vector<int64_t> expert_load_;  // (E) likewise, tokens per expert

};

}  // namespace trident::nn
