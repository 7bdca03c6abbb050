// The run configuration of `trident train`: one struct per concern, and for every field one
// declaration (in the for_each_field lists below) that gives its name, default, --help line,
// accepted range and suggestion aliases. Defaults, --help, command-line and TOML parsing,
// printing, JSON and the config hash are all driven by those lists (run_config.cpp,
// run_config_cli.cpp, run_config_text.cpp).
// Checks that need the model or the world size (heads % tp, layers % pp, world == dp*tp*pp)
// are left to the code that has them.
//
// One declaration per option: an option of a lower layer is its struct's member and enum
// (parallel::EngineOptions with optim::AdamWConfig, data::DataOrder, optim::LrSchedule::Kind,
// pp::ScheduleKind), which the run config holds (RunConfig::engine) and whose default the field
// takes from that struct; the lists below add only the key, --help, range and aliases.
//
// Precedence: the defaults below < the TOML file named by --config < command-line flags.
// Names: a field `grad_accum` of DataOptions is the TOML key `grad_accum` in table [data] and
// the flag `--grad-accum`. Flag names are unique across the tables.
#pragma once

#include <cstdint>
#include <limits>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "data/batch_sampler.h"
#include "kernels/matmul_engine.h"
#include "nn/model_config.h"
#include "nn/recompute.h"
#include "optim/lr_schedule.h"
#include "parallel/engine_options.h"

namespace trident::train {

// ---- Enumerated options. enum_names(E{}) lists the spellings, indexed by the enum's value
// (the lower layer's own table, except for the run's own NonfinitePolicy).
enum class NonfinitePolicy { kSkip, kStop };
// --moe-scoring: keep the model's router scoring (preset / config.json) or set one of nn's.
enum class MoeScoring { kPreset, kSoftmax, kSigmoid };

std::span<const std::string_view> enum_names(data::DataOrder);          // random, sequential
std::span<const std::string_view> enum_names(optim::LrSchedule::Kind);  // cosine, constant
std::span<const std::string_view> enum_names(pp::ScheduleKind);         // gpipe, 1f1b, interleaved
std::span<const std::string_view> enum_names(NonfinitePolicy);          // skip, stop
std::span<const std::string_view> enum_names(MoeScoring);              // preset, softmax, sigmoid
std::span<const std::string_view> enum_names(optim::OffloadKind);       // none, optimizer
std::span<const std::string_view> enum_names(nn::Recompute);            // none, selective, full
std::span<const std::string_view> enum_names(kernels::Precision);       // fp32, bf16, fp16
std::span<const std::string_view> enum_names(parallel::GradReduceDType);  // fp32, bf16
std::span<const std::string_view> enum_names(parallel::GradDType);        // fp32, bf16, fp16

template <class E>
  requires std::is_enum_v<E>
std::string_view enum_name(E e) {
  return enum_names(e)[static_cast<size_t>(e)];
}

// ---- Field descriptors.
// The accepted numeric range of a field (inclusive; `above` makes the lower bound exclusive).
struct Bounds {
  double min = -std::numeric_limits<double>::infinity();
  double max = std::numeric_limits<double>::infinity();
  bool min_exclusive = false;
  bool max_exclusive = false;
};

// What one field is: its name (snake_case; the flag is --kebab-case), default, a one-line
// description for --help, accepted range, and the names other tools use for it (space
// separated; only used to suggest the right name for an unknown key, never accepted).
template <class T>
struct Field {
  std::string_view name;
  T default_value;
  std::string_view help;
  Bounds bounds = {};
  std::string_view default_text = {};  // shown in --help instead of the default value
  std::string_view aliases = {};
  std::string_view value_name = {};  // --help placeholder for strings ("PREFIX", "DIR")

  Field at_least(double lo) const { Field f = *this; f.bounds.min = lo; return f; }
  Field above(double lo) const {
    Field f = *this; f.bounds.min = lo; f.bounds.min_exclusive = true; return f;
  }
  Field at_most(double hi) const { Field f = *this; f.bounds.max = hi; return f; }
  Field below(double hi) const {
    Field f = *this; f.bounds.max = hi; f.bounds.max_exclusive = true; return f;
  }
  Field shown_as(std::string_view text) const { Field f = *this; f.default_text = text; return f; }
  Field alias(std::string_view names) const { Field f = *this; f.aliases = names; return f; }
  Field placeholder(std::string_view text) const { Field f = *this; f.value_name = text; return f; }
};

template <class T>
Field<T> field(std::string_view name, T default_value, std::string_view help) {
  return Field<T>{name, std::move(default_value), help};
}
inline Field<std::string> field(std::string_view name, const char* default_value,
                                std::string_view help) {
  return Field<std::string>{name, std::string(default_value), help};
}

template <class S, class T>
concept OptionsOf = std::is_same_v<std::remove_const_t<S>, T>;

// A table whose fields live partly in its own struct S and partly in the engine's options E:
// both const or both not.
template <class S, class E, class T>
concept TableOf = OptionsOf<S, T> && OptionsOf<E, parallel::EngineOptions> &&
                  (std::is_const_v<S> == std::is_const_v<E>);

// ---- [model]: which network. Overrides left at 0 take the preset's (or config.json's) value.
struct ModelOptions {
  std::string model;       // preset name (nn::model_preset_names()) or path to a config.json
  int n_layer;             // 0: from the preset
  int n_head;              // 0: from the preset
  int n_kv_head;           // 0: from the preset
  int n_embd;              // 0: from the preset
  int n_inner;             // 0: from the preset
  int n_positions;         // 0: from the preset
  int vocab_size;          // 0: from the preset
  int vocab_pad_multiple;  // 0: from the preset
  std::optional<double> moe_aux_loss_coef;  // unset: the preset's / config.json's router_aux_loss_coef
  std::optional<double> moe_z_loss_coef;    // unset: the preset's / config.json's router_z_loss_coef
  std::optional<double> moe_bias_update_rate;  // unset: config.json's router_bias_update_rate (0)
  std::optional<double> moe_capacity_factor;   // unset: config.json's expert_capacity_factor (0)
  std::optional<int> moe_first_k_dense;     // unset: the preset's / config.json's first_k_dense_replace
  std::optional<int> moe_shared_experts;    // unset: the preset's / config.json's n_shared_experts
  std::optional<int> moe_inner;             // unset: the preset's / config.json's moe_intermediate_size
  MoeScoring moe_scoring;                   // kPreset: the preset's / config.json's scoring_func
  std::optional<double> moe_routed_scaling;  // unset: the preset's / config.json's routed_scaling_factor
  std::optional<int> moe_groups;            // unset: the preset's / config.json's n_group
  std::optional<int> moe_topk_groups;       // unset: the preset's / config.json's topk_group
  int lora_rank;             // 0: no adapters, every parameter trained
  double lora_alpha;         // 0: 2 * lora_rank
  std::string lora_targets;  // comma-separated short names of the family's LoRA targets
  ModelOptions();
};

template <class S, class V>
  requires OptionsOf<S, ModelOptions>
void for_each_field(S& o, V&& v) {
  v(field("model", "small", "preset (tiny, small, gpt2, gpt2-medium; llama-tiny, llama-small, llama-1b; mixtral-tiny, mixtral-small) or path "
              "to a Hugging Face config.json (model_type gpt2, llama or mixtral)")
        .placeholder("NAME|PATH").alias("preset model_name arch config"), o.model);
  v(field("n_layer", 0, "override: transformer blocks").at_least(0).shown_as("0 = from the preset")
        .alias("num_layers n_layers layers"), o.n_layer);
  v(field("n_head", 0, "override: attention heads").at_least(0).shown_as("0 = from the preset")
        .alias("num_heads num_attention_heads heads"), o.n_head);
  v(field("n_kv_head", 0, "override: key/value heads (grouped-query attention; Llama)").at_least(0)
        .shown_as("0 = from the preset").alias("num_key_value_heads n_kv_heads kv_heads"), o.n_kv_head);
  v(field("n_embd", 0, "override: channels (hidden size)").at_least(0).shown_as("0 = from the preset")
        .alias("hidden_size d_model n_embed embd"), o.n_embd);
  v(field("n_inner", 0, "override: MLP hidden width (Llama's intermediate_size; GPT-2: 4 * n_embd)").at_least(0)
        .shown_as("0 = from the preset").alias("intermediate_size ffn_dim d_ff mlp_width"), o.n_inner);
  v(field("n_positions", 0, "override: longest sequence the position table holds").at_least(0)
        .shown_as("0 = from the preset").alias("max_position_embeddings n_ctx context_length"), o.n_positions);
  v(field("vocab_size", 0, "override: real tokens in the vocabulary").at_least(0)
        .shown_as("0 = from the preset").alias("vocab n_vocab"), o.vocab_size);
  v(field("vocab_pad_multiple", 0, "override: pad embedding rows to a multiple of this (and of tp)")
        .at_least(0).shown_as("0 = from the preset").alias("pad_vocab_multiple vocab_padding"), o.vocab_pad_multiple);
  v(field("moe_aux_loss_coef", std::optional<double>{}, "override (mixture of experts): weight of the load-balancing loss added to the objective (Hugging Face's router_aux_loss_coef; docs/moe.md)")
        .at_least(0).shown_as("from the preset").alias("router_aux_loss_coef aux_loss_coef moe_aux_loss_coeff load_balancing_coef"), o.moe_aux_loss_coef);
  v(field("moe_z_loss_coef", std::optional<double>{}, "override (mixture of experts): weight of the router z-loss, the mean over layers and tokens of logsumexp(router logits)^2, added to the objective (ST-MoE; Megatron's --moe-z-loss-coeff; docs/moe.md)")
        .at_least(0).shown_as("from the preset (0)").alias("router_z_loss_coef z_loss_coef moe_z_loss_coeff"), o.moe_z_loss_coef);
  v(field("moe_bias_update_rate", std::optional<double>{}, "override (mixture of experts): aux-loss-free balancing (DeepSeek-V3; 0.001 there): a per-expert bias added to the router probabilities for top-k selection only, moved by this much per optimizer step towards balanced load; saved as gate.e_score_correction_bias (docs/moe.md)")
        .at_least(0).shown_as("from config.json (0 = off)").alias("router_bias_update_rate bias_update_speed bias_update_rate moe_router_bias_update_rate aux_free_bias"), o.moe_bias_update_rate);
  v(field("moe_capacity_factor", std::optional<double>{}, "override (mixture of experts): each expert keeps at most ceil(c T k / E) routed tokens of each sequence, by router probability (ties: position); the rest contribute zero (docs/moe.md)")
        .at_least(0).shown_as("from config.json (0 = dropless)").alias("expert_capacity_factor capacity_factor moe_expert_capacity_factor"), o.moe_capacity_factor);
  v(field("moe_first_k_dense", std::optional<int>{}, "override (mixture of experts): the first k layers keep a dense SwiGLU MLP of width n_inner (intermediate_size), the rest have experts (DeepSeek-V3's first_k_dense_replace; docs/moe.md)")
        .at_least(0).shown_as("from the preset (0)").alias("first_k_dense_replace first_k_dense k_dense moe_layer_freq"), o.moe_first_k_dense);
  v(field("moe_shared_experts", std::optional<int>{}, "override (mixture of experts): shared experts every token of an MoE layer passes through, ungated, as one SwiGLU of S x the expert width (DeepSeek's n_shared_experts; docs/moe.md)")
        .at_least(0).shown_as("from the preset (0)").alias("n_shared_experts shared_experts num_shared_experts moe_shared_expert_intermediate_size"), o.moe_shared_experts);
  v(field("moe_inner", std::optional<int>{}, "override (mixture of experts): each routed expert's width, apart from the dense layers' n_inner (Qwen2-MoE / DeepSeek's moe_intermediate_size; the shared experts are S x it; docs/moe.md)")
        .at_least(1).shown_as("from the preset (n_inner)").alias("moe_intermediate_size expert_width moe_ffn_hidden_size"), o.moe_inner);
  v(field("moe_scoring", MoeScoring::kPreset, "override (mixture of experts): how the router scores experts: softmax over the logits (Mixtral) or each logit's sigmoid, the top-k weights then normalised (DeepSeek-V3's scoring_func; docs/moe.md)")
        .alias("scoring_func router_scoring score_func moe_router_score_function"), o.moe_scoring);
  v(field("moe_routed_scaling", std::optional<double>{}, "override (mixture of experts): the routing weights are multiplied by this (DeepSeek-V3's routed_scaling_factor, 2.5 there; docs/moe.md)")
        .above(0).shown_as("from the preset (1)").alias("routed_scaling_factor routed_scaling moe_router_topk_scaling_factor"), o.moe_routed_scaling);
  v(field("moe_groups", std::optional<int>{}, "override (mixture of experts): group-limited routing: the experts in this many groups, a group scored by the sum of its 2 best, a token's experts chosen among the best --moe-topk-groups groups (DeepSeek-V3's n_group; docs/moe.md)")
        .at_least(1).shown_as("from the preset (1 = no limit)").alias("n_group expert_groups moe_router_num_groups"), o.moe_groups);
  v(field("moe_topk_groups", std::optional<int>{}, "override (mixture of experts): the groups a token's experts may come from (DeepSeek-V3's topk_group; docs/moe.md)")
        .at_least(1).shown_as("from the preset (all groups)").alias("topk_group moe_router_group_topk"), o.moe_topk_groups);
  v(field("lora_rank", 0, "LoRA: train rank-r adapters on a frozen base (needs --init-from or --resume; docs/lora.md)")
        .at_least(0).shown_as("0 = off").alias("lora_r lora_dim"), o.lora_rank);
  v(field("lora_alpha", 0.0, "LoRA: adapter outputs are scaled by alpha / r (PEFT's lora_alpha)")
        .at_least(0).shown_as("0 = 2 * lora_rank").alias("lora_scaling"), o.lora_alpha);
  v(field("lora_targets", "", "LoRA: layers to adapt; llama/mixtral q,k,v,o(,gate,up,down: llama); gpt2 c_attn,attn.c_proj,c_fc,mlp.c_proj")
        .placeholder("LIST").shown_as("none").alias("target_modules lora_target_modules"), o.lora_targets);
}

// ---- [data]: what the model reads, and how much per step.
struct DataOptions {
  std::string data;            // PREFIX: reads PREFIX_train.bin and PREFIX_val.bin
  data::DataOrder data_order;  // the sampler's (data/batch_sampler.h)
  int seq_len;           // T, tokens per sequence
  int batch_size;        // B, sequences per optimizer step over all data-parallel ranks
  int grad_accum;        // micro-batches per step per data-parallel rank (pipeline: the micro-batch count)
  int eval_every;        // steps between validation passes; 0: never
  int eval_batches;      // batches of batch_size sequences per validation pass
  DataOptions();
};

template <class S, class V>
  requires OptionsOf<S, DataOptions>
void for_each_field(S& o, V&& v) {
  v(field("data", "", "token shards PREFIX_train.bin and PREFIX_val.bin (written by trident prepare)")
        .placeholder("PREFIX").shown_as("none; required unless resuming").alias("dataset data_prefix data_dir prefix"), o.data);
  v(field("data_order", data::SamplerConfig{}.order,
          "random: each step's batch drawn from (seed, step); sequential: read front to back like llm.c")
        .alias("order shuffle sampling"), o.data_order);
  v(field("seq_len", 64, "tokens per sequence (T); at most the model's n_positions").at_least(1)
        .alias("seq_length sequence_length block_size context T"), o.seq_len);
  v(field("batch_size", 8, "sequences per optimizer step, over all data-parallel ranks (global B)")
        .at_least(1).alias("global_batch_size batch B"), o.batch_size);
  v(field("grad_accum", 1, "micro-batches per step on each data-parallel rank (pipeline: the micro-batch count)")
        .at_least(1).alias("gradient_accumulation_steps accumulation accum grad_accumulation"), o.grad_accum);
  v(field("eval_every", 100, "steps between validation passes (and at the last step); 0: never")
        .at_least(0).alias("eval_interval val_every val_interval"), o.eval_every);
  v(field("eval_batches", 20, "batches of batch_size sequences per validation pass").at_least(1)
        .alias("eval_iters val_batches val_steps eval_steps"), o.eval_batches);
}

// ---- [optim]: the learning-rate schedule, and the engine's AdamW, gradient clipping and fp16
// loss scaling (RunConfig::engine: weight_decay, beta1, beta2, eps, grad_clip, loss_scaler).
struct OptimOptions {
  double lr;                    // peak learning rate
  std::optional<double> min_lr;  // floor of the cosine decay; unset: lr / 10 (filled in by parsing)
  int warmup_steps;             // linear warm-up from 0 to lr
  optim::LrSchedule::Kind lr_schedule;  // cosine: decay to min_lr at the last step; constant: lr after warm-up
  NonfinitePolicy on_nonfinite;  // a step whose loss or grad norm is NaN/inf: skip it, or stop
  int max_bad_steps;             // skip: stop after this many non-finite steps in a row
  OptimOptions();
  double min_lr_value() const { return min_lr.value_or(lr / 10); }
};

template <class S, class E, class V>
  requires TableOf<S, E, OptimOptions>
void for_each_field(S& o, E& e, V&& v) {
  const parallel::EngineOptions d;  // the engine's defaults are the run's
  v(field("lr", 6e-4, "peak learning rate, reached at the end of warm-up").at_least(0)
        .alias("learning_rate max_lr peak_lr"), o.lr);
  v(field("min_lr", std::optional<double>{}, "learning rate at the end of the cosine decay").at_least(0)
        .shown_as("lr / 10").alias("min_learning_rate final_lr lr_min"), o.min_lr);
  v(field("warmup_steps", 0, "steps of linear warm-up from 0 to lr").at_least(0)
        .alias("warmup warmup_iters lr_warmup_steps lr_warmup_iters"), o.warmup_steps);
  v(field("lr_schedule", optim::LrSchedule{}.kind,
          "cosine: decay from lr to min_lr by the last step; constant: lr after warm-up")
        .alias("lr_scheduler scheduler decay lr_decay lr_decay_style"), o.lr_schedule);
  v(field("weight_decay", d.adamw.weight_decay, "AdamW decoupled weight decay (matrices only)").at_least(0)
        .alias("wd decay_rate"), e.adamw.weight_decay);
  v(field("beta1", d.adamw.beta1, "AdamW first-moment decay").at_least(0).below(1)
        .alias("adam_beta1 b1 momentum"), e.adamw.beta1);
  v(field("beta2", d.adamw.beta2, "AdamW second-moment decay").at_least(0).below(1)
        .alias("adam_beta2 b2"), e.adamw.beta2);
  v(field("eps", d.adamw.eps, "AdamW denominator epsilon").above(0).alias("adam_eps epsilon adam_epsilon"),
    e.adamw.eps);
  v(field("grad_clip", d.grad_clip, "clip the global gradient norm to this; 0: no clipping").at_least(0)
        .alias("clip_grad max_grad_norm clip_grad_norm grad_norm_clip"), e.grad_clip);
  v(field("on_nonfinite", NonfinitePolicy::kSkip,
          "a step whose loss or grad norm is NaN/inf on any rank is never applied (weights, moments, "
          "Adam step unchanged; the data order advances, the LR schedule does not, as in Megatron-LM); skip: go on, stop: end the run")
        .alias("nonfinite nan_policy skip_nan on_nan"), o.on_nonfinite);
  v(field("max_bad_steps", 5, "with on_nonfinite skip: stop with an error after this many non-finite "
                              "steps in a row").at_least(1)
        .alias("max_skipped_steps max_nan_steps bad_steps"), o.max_bad_steps);
  v(field("initial_loss_scale", d.loss_scaler.initial_scale, "precision fp16: the loss scale of the first step (backward runs on loss x scale; a step whose scaled gradients overflow is skipped on every rank)")
        .above(0).shown_as("2^32").alias("loss_scale init_loss_scale initial_scale"), e.loss_scaler.initial_scale);
  v(field("min_loss_scale", d.loss_scaler.min_scale, "precision fp16: the scale never drops below this; an overflow at it is a non-finite step (on_nonfinite)")
        .above(0).alias("min_scale loss_scale_min"), e.loss_scaler.min_scale);
  v(field("loss_scale_window", d.loss_scaler.growth_interval, "precision fp16: clean steps in a row before the loss scale doubles")
        .at_least(1).alias("growth_interval scale_window"), e.loss_scaler.growth_interval);
  v(field("hysteresis", d.loss_scaler.hysteresis, "precision fp16: overflowing steps tolerated before the loss scale halves (refilled when it grows)")
        .at_least(1).alias("loss_scale_hysteresis"), e.loss_scaler.hysteresis);
}

// ---- [parallel]: how the work is laid out over dp * tp * pp ranks: the mesh shape and the
// micro-batch count here, the rest the engine's options (RunConfig::engine: zero, schedule,
// virtual_stages, balance_stages, sequence_parallel, recompute, bucket_mb, overlap, offload).
struct ParallelOptions {
  int dp;             // data-parallel replicas
  int tp;             // tensor-parallel ranks per layer
  int pp;             // pipeline stages
  int ep;             // expert-parallel ranks, out of dp (mixture of experts)
  int micro_batches;  // pipeline micro-batches per step; 0: grad_accum
  ParallelOptions();
  int world_size() const { return dp * tp * pp; }
};

template <class S, class E, class V>
  requires TableOf<S, E, ParallelOptions>
void for_each_field(S& o, E& e, V&& v) {
  const parallel::EngineOptions d;  // the engine's defaults are the run's
  v(field("dp", 1, "data-parallel replicas").at_least(1)
        .alias("data_parallel data_parallel_size dp_size"), o.dp);
  v(field("tp", 1, "tensor-parallel ranks per layer (Megatron-style)").at_least(1)
        .alias("tensor_parallel tensor_model_parallel_size tp_size"), o.tp);
  v(field("pp", 1, "pipeline stages").at_least(1)
        .alias("pipeline_parallel pipeline_model_parallel_size pp_size stages"), o.pp);
  v(field("ep", 1, "expert-parallel ranks (mixture of experts): each group of ep dp ranks splits every layer's experts between them and exchanges tokens by all-to-all; ep divides dp and num_local_experts; any ZeRO stage (expert state sharded over the dp / ep ranks holding the same experts; docs/moe.md)")
        .at_least(1).alias("expert_parallel expert_model_parallel_size ep_size moe_expert_parallel"), o.ep);
  v(field("zero", d.zero, "ZeRO stage over dp: 0 none, 1 optimizer state, 2 + gradients, 3 + parameters")
        .at_least(0).at_most(3).alias("zero_stage stage"), e.zero);
  v(field("schedule", d.schedule, "pipeline schedule (used when pp > 1)")
        .alias("pipeline_schedule pp_schedule"), e.schedule);
  v(field("micro_batches", 0, "pipeline micro-batches per step").at_least(0).shown_as("0 = grad_accum")
        .alias("num_microbatches microbatches num_micro_batches chunks"), o.micro_batches);
  v(field("virtual_stages", d.virtual_stages, "model chunks per pipeline rank (needs schedule interleaved when > 1)")
        .at_least(1).alias("virtual_pipeline_model_parallel_size num_virtual_stages vpp chunks_per_stage"),
    e.virtual_stages);
  v(field("balance_stages", d.balance_stages, "pp > 1: split layers by estimated cost (each layer its forward FLOPs, the LM head as vocab/(12*n_embd + 2*seq_len) GPT-2 layers) instead of evenly")
        .alias("balance partition_by_cost cost_balanced"), e.balance_stages);
  v(field("sequence_parallel", d.sequence_parallel, "split LayerNorm/dropout regions along the sequence over tp")
        .alias("sp sequence_parallelism"), e.sequence_parallel);
  v(field("recompute", d.recompute,
          "activation recomputation: none; selective: drop each layer's attention probabilities and recompute them from the saved qkv in backward; full: keep only each layer's input and rerun its forward before its backward (results bitwise as none; see docs/memory.md)")
        .alias("recompute_granularity activation_checkpointing checkpoint_activations ac"), e.recompute);
  v(field("bucket_mb", d.bucket_mb, "data-parallel gradient bucket size, MiB").above(0)
        .alias("bucket_size bucket_cap_mb bucket_size_mb"), e.bucket_mb);
  v(field("overlap", d.overlap, "overlap gradient communication with backward")
        .alias("overlap_comm overlap_grad_reduce"), e.overlap);
  v(field("offload", d.offload.kind,
          "none; optimizer: the AdamW moments this rank owns (its ZeRO shard) live in a file under --offload-dir, streamed through in blocks with io_uring while the update runs, and in bf16/fp16 at --zero 1-2 the fp32 master of the layer matrices too (the 16-bit copy stays in memory); optimizer+params (needs --zero 3): the parameter shard too, each layer's slice read ahead of its gather (results bitwise as none; see docs/memory.md)")
        .alias("offload_optimizer cpu_offload optimizer_offload zero_offload offload_device"), e.offload.kind);
  v(field("offload_dir", d.offload.dir, "directory (existing, writable, with room for 8 bytes per parameter, 12 with optimizer+params or a bf16/fp16 ZeRO 1-2 master) for --offload's files, one per rank; two live runs cannot share it")
        .placeholder("DIR").shown_as("none").alias("nvme_path offload_path swap_dir offload_folder"), e.offload.dir);
  v(field("offload_block_kib", d.offload.block_kib, "--offload: KiB of one moment per I/O block (a multiple of 4); three blocks of both moments (and values) stay in memory")
        .at_least(4).alias("offload_block_size buffer_size offload_buffer_size"), e.offload.block_kib);
}

// ---- [train]: the run itself.
struct TrainOptions {
  int steps;              // optimizer steps to take (in total, when resuming)
  int stop_after;         // stop (with a checkpoint) once this many steps are done; 0: at `steps`
  int64_t seed;           // weights, data order and dropout all derive from it (>= 0; TOML integers are int64)
  std::string init_from;  // directory with model.safetensors + config.json to start from
  std::string resume;     // checkpoint to continue from (DIR/latest or a step dir); restores the run config
  std::string ckpt_dir;   // where checkpoints go; empty: none
  int ckpt_every;         // steps between checkpoints (and at the end); 0: only at the end
  int keep_last;          // checkpoints kept in ckpt_dir (the newest); 0: all
  bool async_ckpt;        // write the periodic checkpoints from a snapshot on a background thread
  std::string metrics;    // JSON-lines metrics file; empty: none
  std::string pipeline_timeline;  // SVG of the last step's measured pipeline timeline; empty: none
  std::string batch_log;  // JSON lines: each step's global batch as row offsets into the shard; empty: none
  int threads;            // OpenMP threads per rank; 0: OpenMP's default
  int log_every;          // steps between progress lines on stderr
  std::string preempt_signals;  // signals that stop the run after this step with a checkpoint
  TrainOptions();
};

// Of [train], the engine's options hold `precision`, `grad_reduce_dtype` and `grad_dtype` (RunConfig::engine).
template <class S, class E, class V>
  requires TableOf<S, E, TrainOptions>
void for_each_field(S& o, E& e, V&& v) {
  v(field("steps", 100, "optimizer steps in the whole run (a resumed run counts from its checkpoint)")
        .at_least(1).alias("max_steps max_iters iters num_steps train_iters train_steps iterations"), o.steps);
  v(field("stop_after", 0, "stop (and checkpoint) after this many steps; the LR schedule still spans --steps, so --resume continues it exactly")
        .at_least(0).shown_as("0 = run to --steps").alias("stop_at halt_after"), o.stop_after);
  v(field("seed", int64_t{1337}, "seeds weights, data order and dropout").at_least(0)
        .alias("random_seed rng_seed"), o.seed);
  v(field("init_from", "", "start from a directory holding model.safetensors and config.json (a `trident quantize` output: QLoRA, with --lora-rank); its config.json is the model, so shape overrides that would change it are refused")
        .placeholder("DIR").shown_as("none").alias("init pretrained from_pretrained load init_checkpoint"), o.init_from);
  v(field("resume", "", "continue the run saved in DIR (DIR/latest, or a step directory) with its saved options; flags given override, each change printed").placeholder("DIR").shown_as("none")
        .alias("resume_from restore resume_dir"), o.resume);
  v(field("ckpt_dir", "", "directory for checkpoints DIR/step_NNNNNNNN").placeholder("DIR").shown_as("none: no checkpoints")
        .alias("checkpoint_dir out_dir save_dir output_dir save out output"), o.ckpt_dir);
  v(field("ckpt_every", 0, "steps between checkpoints (one is always written at the end)").at_least(0)
        .shown_as("0 = only at the end").alias("save_every checkpoint_every save_interval ckpt_interval"),
    o.ckpt_every);
  v(field("keep_last", 0, "keep only the newest K checkpoints in --ckpt-dir, removing older ones after each save (never the one 'latest' names)")
        .at_least(0).shown_as("0 = keep all").placeholder("K").alias("save_total_limit keep_checkpoints max_checkpoints keep"), o.keep_last);
  v(field("async_ckpt", false, "write each --ckpt-every checkpoint on a background thread from a snapshot while training goes on (rank 0 then holds a host copy of the model and both AdamW moments, 12 bytes per parameter; a LoRA run's moments are its adapters' only, a QLoRA run's copy holds no base); a failed write stops the run at the next step; the final checkpoint waits for it")
        .alias("async_save async_checkpoint async_checkpointing background_save"), o.async_ckpt);
  v(field("metrics", "", "write one JSON line of metrics per step to this file").placeholder("FILE").shown_as("none")
        .alias("metrics_file log_file metrics_path"), o.metrics);
  v(field("pipeline_timeline", "", "with pp > 1: write the last step's measured pipeline timeline to FILE as SVG")
        .placeholder("FILE").shown_as("none").alias("timeline pp_timeline trace"), o.pipeline_timeline);
  v(field("batch_log", "", "write each step's global batch to FILE as JSON lines (the training shard offset of every row), so what a run trained on can be replayed")
        .placeholder("FILE").shown_as("none").alias("data_log batch_trace log_batches"), o.batch_log);
  v(field("threads", 0, "OpenMP threads per rank").at_least(0).shown_as("0 = OpenMP's default")
        .alias("num_threads omp_threads nthreads"), o.threads);
  v(field("precision", parallel::EngineOptions{}.precision,
          "matmul precision: fp32; bf16: every matmul of forward and backward rounds its operands to bf16 and accumulates in fp32 (torch.autocast-style), the weights read from a bf16 copy made once a step from the fp32 master (2 more bytes a parameter; at ZeRO 1-2 the copy persists and the layer matrices' fp32 master is sharded over dp, docs/memory.md); fp16: the same with fp16 operands (overflow beyond 65504 is inf) and dynamic loss scaling ([optim] initial_loss_scale, loss_scale_window, hysteresis, min_loss_scale); gradients (unless --grad-dtype), optimizer state, the master weights and checkpoints stay fp32")
        .alias("dtype mixed_precision amp autocast compute_dtype"), e.precision);
  v(field("stochastic_rounding", parallel::EngineOptions{}.stochastic_rounding,
          "precision bf16: round the fp32 master weights into the bf16 copy the matmuls read stochastically (up with probability of the dropped bits, as llm.c) instead of to nearest even, keyed by (seed, step, parameter name, element index) so every layout rounds alike")
        .alias("stochastic_round bf16_stochastic_rounding"), e.stochastic_rounding);
  v(field("grad_reduce_dtype", parallel::EngineOptions{}.grad_reduce_dtype,
          "element type of the data-parallel gradient sums (DDP allreduce, ZeRO reduce-scatter, ep's edp sums): fp32; bf16: half the bytes, each rank's gradient rounded to bf16 and the ranks' values added in fp32 in rank order at the chunk's owner, then rounded to bf16 once (the same bits on every rank, for any bucket size); needs dp > 1")
        .alias("reduce_dtype grad_reduce_precision allreduce_dtype grad_comm_dtype"), e.grad_reduce_dtype);
  v(field("grad_dtype", parallel::EngineOptions{}.grad_dtype,
          "element type of the gradients at rest (what the optimizer, the gradient norm, clipping and the nonfinite check read): fp32; bf16 with --precision bf16, fp16 with --precision fp16 (scaled by the loss scale: an overflow is an inf and the step is skipped): 2 bytes an element (ZeRO 2-3's gradient shard, ZeRO 0-1's flat gradients with one layer group's fp32 working buffer in backward), each micro-batch's gradient still computed in fp32 and added to the stored one with one rounding to nearest even; ZeRO 0-1 not with --pp > 1 (docs/memory.md)")
        .alias("grad_accum_dtype main_grads_dtype gradient_dtype grads_dtype"), e.grad_dtype);
  v(field("log_every", 1, "steps between progress lines on stderr").at_least(1)
        .alias("log_interval print_every"), o.log_every);
  v(field("preempt_signals", "TERM,INT,USR1",
          "signals that stop the run after the current step with a checkpoint (exit 75; a second one aborts at once); none: keep the default actions")
        .placeholder("SIG,SIG").alias("signals stop_signals preemption_signals"), o.preempt_signals);
}

// ---- The whole run.
struct RunConfig {
  ModelOptions model;
  DataOptions data;
  OptimOptions optim;
  ParallelOptions parallel;
  TrainOptions train;
  // The engine's options, set from [parallel], [optim] and [train] (their field lists say which).
  // The micro-batch count is not one of them: the engine takes num_micro_batches() with the batch.
  parallel::EngineOptions engine;

  // Sequences each data-parallel rank takes per step: batch_size / dp.
  int rank_batch() const { return data.batch_size / parallel.dp; }
  // Micro-batches per step per data-parallel rank: micro_batches, or grad_accum when 0.
  int num_micro_batches() const {
    return parallel.micro_batches > 0 ? parallel.micro_batches : data.grad_accum;
  }
  // Sequences per micro-batch: batch_size / dp / num_micro_batches().
  int micro_batch_size() const { return rank_batch() / num_micro_batches(); }
};

// The tables in TOML order, with the title --help shows for each.
struct Section {
  std::string_view name;
  std::string_view title;
  std::string_view aliases;  // for suggestions only, as Field::aliases
};
inline constexpr Section kSections[] = {
    {"model", "the network", "network arch architecture gpt"},
    {"data", "token shards, sequence length, batch", "dataset dataloader input"},
    {"optim", "AdamW, learning-rate schedule, clipping", "optimizer optimiser optimization adamw"},
    {"parallel", "layout over dp * tp * pp ranks", "parallelism distributed layout"},
    {"train", "steps, seed, checkpoints, metrics", "training run trainer checkpoint"},
};

// Visits every field of the run as v(section_name, field, value).
template <class S, class V>
  requires OptionsOf<S, RunConfig>
void for_each_field(S& c, V&& v) {
  for_each_field(c.model, [&](const auto& f, auto& x) { v(kSections[0].name, f, x); });
  for_each_field(c.data, [&](const auto& f, auto& x) { v(kSections[1].name, f, x); });
  for_each_field(c.optim, c.engine, [&](const auto& f, auto& x) { v(kSections[2].name, f, x); });
  for_each_field(c.parallel, c.engine, [&](const auto& f, auto& x) { v(kSections[3].name, f, x); });
  for_each_field(c.train, c.engine, [&](const auto& f, auto& x) { v(kSections[4].name, f, x); });
}

// ---- The API.

// Field names ("steps", "lr", ...; unique across the tables) that a source set explicitly.
using FieldNames = std::set<std::string, std::less<>>;

// Parses `trident train` arguments. argv[0] (the program or subcommand name) is skipped.
// Accepts `--config FILE.toml` (anywhere, once), `--name VALUE`, `--name=VALUE`, and for
// booleans `--name`, `--no-name`, `--name=true|false`. `--help`/`-h` are ignored here: check
// run_config_wants_help first. Throws trident::Error naming the option, where it came from
// and what is accepted. The result is validated and has min_lr filled in.
// With `given`, also records the fields the TOML file or a flag set (whatever the value), so
// that `--resume` can tell an explicit `--zero 0` from the default.
RunConfig parse_run_config(int argc, char** argv, FieldNames* given = nullptr);
bool run_config_wants_help(int argc, char** argv);

// Applies a TOML document (the text, and the name used in messages) on top of `cfg`.
// With `set_fields`, records the fields it set.
void apply_toml(RunConfig& cfg, std::string_view toml_text, std::string_view source_name,
                FieldNames* set_fields = nullptr);
void apply_toml_file(RunConfig& cfg, const std::string& path, FieldNames* set_fields = nullptr);

// Copies the fields named in `names` from `src` into `dst`; returns those whose value changed,
// as "--steps 100 -> 200" with the flag's spelling, in field order.
struct FieldChange {
  std::string section;
  std::string name;
  std::string text;  // "--steps 100 -> 200"
};
std::vector<FieldChange> override_fields(RunConfig& dst, const RunConfig& src, const FieldNames& names);

// Fills in derived defaults (min_lr = lr / 10) and checks the relations between fields that
// need neither the model nor the world (batch_size % dp, micro-batch split, schedule vs
// virtual stages, ...). Throws trident::Error with what to change.
void finalize_run_config(RunConfig& cfg);
void validate_run_config(const RunConfig& cfg);

// Usage text: every option grouped by table, with its default and a one-line description.
std::string run_config_help();

// A readable dump that is itself a valid TOML config (`trident train --config` accepts it).
std::string format_run_config(const RunConfig& cfg);

// {"model": {...}, "data": {...}, ...}: every field, enums as their names. Stored in
// checkpoints' trident.json. run_config_from_json takes missing keys from the defaults,
// rejects unknown ones and validates the result.
// `source_name` is how errors name the document ("run/step_00000004/trident.json 'run_config'").
nlohmann::json to_json(const RunConfig& cfg);
RunConfig run_config_from_json(const nlohmann::json& j,
                               std::string_view source_name = "the JSON run config");

// FNV-1a 64 over to_json(cfg).dump() (sorted keys): equal on every rank iff the configs agree.
uint64_t run_config_hash(const RunConfig& cfg);

// The model the run trains: the preset or config.json named by `model`, with the non-zero
// overrides applied, validated. (With train.init_from set the caller reads that directory's
// config.json instead.)
nn::ModelConfig resolve_model_config(const ModelOptions& model);
// `model` with the [model] options that weight the objective rather than shape the base network
// (moe_aux_loss_coef, moe_z_loss_coef) and the LoRA adapters (lora_rank, lora_alpha,
// lora_targets; validated here) applied: also honoured for a model loaded with --init-from.
nn::ModelConfig with_objective_overrides(nn::ModelConfig model, const ModelOptions& options);
// `model` with the set [model] overrides that shape the network (layers, widths, heads, the
// experts' layout and router rule) applied, not validated.
nn::ModelConfig with_shape_overrides(nn::ModelConfig model, const ModelOptions& options);
// --init-from: the checkpoint's weights fix the model, so shape overrides that would change
// `stored` are refused (one naming what differs); ones that restate it are fine.
void check_init_from_shape(const nn::ModelConfig& stored, const ModelOptions& options, const std::string& dir);

}  // namespace trident::train
