// The model's shape: which architecture family, its hyperparameters, the named presets. What
// each family means by them -- its parameters, Hugging Face config.json keys, validation,
// FLOPs -- is declared once in nn/architecture.h; the count and checks here derive from it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "nn/lora_config.h"

namespace trident::nn {

// Hugging Face's model_type of each family Trident implements.
enum class Family { kGpt2, kLlama, kMixtral };
std::string_view family_name(Family f);  // "gpt2", "llama", "mixtral"

// How a mixture of experts' router turns logits into scores (Hugging Face's scoring_func).
enum class RouterScoring { kSoftmax, kSigmoid };
std::string_view scoring_name(RouterScoring s);  // "softmax", "sigmoid"

struct ModelConfig {
  Family family = Family::kGpt2;
  int n_layer = 12;
  int n_head = 12;
  int n_kv_head = 0;  // key/value heads (grouped-query attention); 0 = n_head
  int n_embd = 768;
  int n_inner = 0;    // MLP hidden width; 0 = the family's default (GPT-2: 4 * n_embd)
  int n_positions = 1024;  // longest sequence (GPT-2: rows of the position table)
  int vocab_size = 50257;  // real tokens; the embedding may be padded (below)
  // The embedding/LM-head rows are padded up to a multiple of this (and of the tensor-parallel
  // size) for fast matmuls; padded logits are masked out, so the loss never changes.
  int vocab_pad_multiple = 64;
  double norm_eps = 1e-5;      // LayerNorm / RMSNorm epsilon
  double rope_theta = 10000.0;  // rotary base (Llama)
  bool tie_word_embeddings = true;  // the LM head is the token embedding
  // Mixture of experts (Mixtral): every layer's MLP is n_experts SwiGLU experts of width
  // mlp_width(), each token routed to its top n_experts_per_tok (nn/moe_mlp.h). 0 = dense.
  int n_experts = 0;            // num_local_experts
  int n_experts_per_tok = 2;    // num_experts_per_tok (k)
  bool norm_topk_prob = true;   // renormalise the k routing weights to sum 1 (Mixtral: always)
  double router_aux_loss_coef = 0.001;  // weight of the load-balancing loss (docs/moe.md)
  double router_z_loss_coef = 0.0;      // weight of the router z-loss (docs/moe.md); 0: off
  // Aux-loss-free balancing (DeepSeek-V3; nn/moe_router.h): each layer's per-expert selection
  // bias moves by this much per optimizer step towards balanced load. 0: off, no bias at all.
  double router_bias_update_rate = 0.0;
  // Capacity (nn/moe_router.h): an expert keeps at most ceil(c T k / E) of a sequence's routed
  // tokens, by router probability. 0: dropless.
  double expert_capacity_factor = 0.0;
  // DeepSeek-V3's first_k_dense_replace: layers [0, first_k_dense) keep Llama's dense SwiGLU
  // MLP (model.layers.N.mlp.*, width mlp_width(), intermediate_size); the rest are MoE layers.
  int first_k_dense = 0;
  // DeepSeek's n_shared_experts: S SwiGLU experts every token of an MoE layer passes through,
  // ungated, added to the routed experts' output; built as DeepSeek builds them, ONE SwiGLU of
  // width S * expert_width() (nn/mlp.h). 0: none.
  int n_shared_experts = 0;
  // DeepSeek / Qwen2-MoE's moe_intermediate_size: each routed expert's width (and, times
  // n_shared_experts, the shared experts'), apart from the dense layers' intermediate_size
  // (n_inner). 0: the experts are mlp_width() wide (Mixtral's meaning of intermediate_size).
  int moe_inner = 0;
  // DeepSeek-V3's router (nn/moe_router.h): scoring_func (softmax, or sigmoid scores), the
  // routing weights' routed_scaling_factor, and group-limited routing (the E experts in n_group
  // groups, only the best topk_group groups eligible; n_group 1: no limit).
  RouterScoring scoring = RouterScoring::kSoftmax;
  double routed_scaling_factor = 1.0;
  int n_group = 1;
  int topk_group = 1;
  // LoRA adapters on a frozen base (nn/lora.h); off by default. Not a config.json key: a
  // checkpoint's adapters are described by their own adapter_config.json.
  LoraConfig lora;
  // QLoRA: the frozen base's layer matrices stay packed as `trident quantize` wrote them
  // ("int8" or "q4", quant/quant_format.h; q4 with packed_base_group inputs per group) and are
  // dequantized one layer at a time (quant/packed_base.h). "": an fp32 base. Not a config.json
  // key: the quantized checkpoint's quantization_config says it.
  std::string packed_base_format;
  int packed_base_group = 0;
  // The tokenizer of the token shards the model was trained on ("gpt2", "cl100k": their
  // PREFIX_meta.json says it, data/shard_meta.h), so `generate` and `eval` use that vocabulary
  // and refuse another; "" when unknown (a Hugging Face directory, shards without a meta file).
  // Not an architecture fact: config.json holds it as "trident_tokenizer" for every family.
  std::string tokenizer;

  int head_size() const { return n_embd / n_head; }
  int kv_heads() const { return n_kv_head > 0 ? n_kv_head : n_head; }
  int mlp_width() const { return n_inner > 0 ? n_inner : 4 * n_embd; }
  bool is_moe() const { return n_experts > 0; }
  bool has_router_bias() const { return is_moe() && router_bias_update_rate > 0; }
  bool packed_base() const { return lora.enabled() && !packed_base_format.empty(); }
  // Whether layer `layer`'s MLP is the mixture of experts (not one of the first_k_dense).
  bool layer_is_moe(int layer) const { return is_moe() && layer >= first_k_dense; }
  // Layers with experts in [begin, end) (the aux losses and expert load average over these).
  int moe_layers(int begin, int end) const {
    return is_moe() ? std::max(0, end - std::max(begin, first_k_dense)) : 0;
  }
  int moe_layers() const { return moe_layers(0, n_layer); }
  // A routed expert's width (moe_intermediate_size, or intermediate_size when unset).
  int expert_width() const { return moe_inner > 0 ? moe_inner : mlp_width(); }
  int shared_expert_width() const { return n_shared_experts * expert_width(); }
  // vocab_size rounded up to a multiple of vocab_pad_multiple * tp.
  int64_t padded_vocab(int tp = 1) const;
  // Parameters of the logical (unpadded, Hugging Face) model, a tied head counted once;
  // summed from the architecture's declarations in 64 bits (throws on overflow).
  int64_t num_parameters() const;
  // Throws trident::Error naming the first bad field and what to do.
  void validate() const;
  std::string describe() const;  // "llama n_layer=12 n_head=12 n_embd=768 ..."
};

// The one check that `seq_len` tokens fit the model's positions (GPT-2's position table, Llama's
// rope cache: both built for n_positions), with the fix in its message.
void check_sequence_length(const ModelConfig& config, int64_t seq_len);

// Presets of every family: "tiny", "small", "gpt2", "gpt2-medium", "llama-tiny",
// "llama-small", "llama-1b". Throws trident::Error listing them for any other name.
ModelConfig model_preset(std::string_view name);
std::vector<std::string> model_preset_names();

}  // namespace trident::nn
