// An architecture family, declared once: its Hugging Face config.json keys (read and written
// here, with defaults and validation), its parameters (param_decl.h: name, shape, tp split,
// decay, init, role, ties), its per-layer activation floats and how to build its layers.
// Everything else derives from the declaration: the parameter count, the checkpoint tensor
// list, each rank's slices, `ckpt info`, the memory model, the planner's costs and the MFU
// formula. Adding a family is one more Architecture (docs/DESIGN.md, "Adding an architecture").
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/matmul_engine.h"
#include "nn/model_config.h"
#include "nn/lora.h"
#include "nn/param_decl.h"

namespace trident::nn {

class Layer;
struct TpContext;

// A config field whose value a checkpoint's tensors reveal: the size of `dim` of `tensor`
// (so a mismatch can say "checkpoint has n_embd 384 but the model has 768").
struct ShapeWitness {
  std::string field;
  std::string tensor;
  int dim;
  int64_t value;  // what the model's config says
};

class Architecture {
 public:
  virtual ~Architecture() = default;
  virtual Family family() const = 0;
  // Hugging Face config.json keys, this family's and no other's (another family's key in a
  // config.json is a contradiction).
  virtual std::vector<std::string> hf_keys() const = 0;
  virtual nlohmann::json to_hf_json(const ModelConfig& c) const = 0;
  // model_type has been checked; `source` names the file in errors.
  virtual ModelConfig from_hf_json(const nlohmann::json& j, const std::string& source) const = 0;
  virtual std::vector<std::string> preset_names() const = 0;
  virtual ModelConfig preset(std::string_view name) const = 0;  // name is one of preset_names()
  // Family-specific checks beyond ModelConfig::validate's generic ones.
  virtual void validate(const ModelConfig& c) const = 0;

  // ---- parameters, in registration (and checkpoint) order ----
  virtual std::vector<ParamDecl> embedding_params(const ModelConfig& c) const = 0;
  // Layer `layer`'s parameters. Layers of one run of layer_runs() declare the same shapes
  // (the counts multiply a run's first layer by its length, never listing n_layer layers).
  virtual std::vector<ParamDecl> layer_params(const ModelConfig& c, int layer) const = 0;
  struct LayerRun {
    int begin = 0, end = 0;  // layers [begin, end)
  };
  // Consecutive layers declaring the same shapes, covering [0, n_layer) in order: one run
  // unless a family's layers differ (Mixtral's first_k_dense dense layers).
  virtual std::vector<LayerRun> layer_runs(const ModelConfig& c) const { return {{0, c.n_layer}}; }
  virtual std::vector<ParamDecl> head_params(const ModelConfig& c) const = 0;
  // Hugging Face tensors a checkpoint may hold that are not parameters (attention masks,
  // rotary buffers, a tied lm_head.weight); `name` is without any prefix.
  virtual bool ignorable_tensor(const ModelConfig& c, const std::string& name) const = 0;
  // Prefix a model class adds before every name (GPT2LMHeadModel saves "transformer.wte...").
  virtual std::string_view hf_alternative_prefix() const { return ""; }
  // Matches "h.12." / "model.layers.12." and returns 12, else -1 (to infer n_layer).
  virtual int layer_of(const std::string& name) const = 0;
  virtual std::vector<ShapeWitness> shape_witnesses(const ModelConfig& c) const = 0;
  // The linear layers of layer `layer` a LoRA adapter may attach to (nn/lora.h), declared with
  // the layer's parameters.
  virtual std::vector<LoraTarget> lora_targets(const ModelConfig& c, int layer) const = 0;
  // Why a name that is no target is refused, when the family has a reason to give ("" else).
  virtual std::string lora_unsupported(const std::string& /*target*/) const { return ""; }

  // ---- compute and memory ----
  // Bytes one layer's forward saves for backward (B rows of T tokens; `local_rows` the
  // sequence-parallel rows, N without it; `storage`: how its matmul-only operands are saved,
  // nn/saved_operand.h): the activation formula of docs/memory.md.
  // Per layer (`layer`: its global index; layers of a run are alike).
  virtual int64_t layer_activation_bytes(const ModelConfig& c, int tp, int64_t B, int64_t T, int64_t local_rows,
                                         int layer, kernels::Precision storage) const = 0;
  // Of those, the attention core's (LayerActivations::attention_core): what selective
  // recompute does not save per layer.
  virtual int64_t attention_core_floats(const ModelConfig& c, int tp, int64_t B, int64_t T, int layer) const = 0;
  // Gradient scratch of one layer's backward, floats for N tokens (the layers share the
  // largest of a model's: one layer's backward runs at a time).
  virtual int64_t layer_scratch_floats(const ModelConfig& c, int tp, int64_t N, int layer) const = 0;
  virtual std::unique_ptr<Layer> make_layer(ParameterSet& params, const ModelConfig& c,
                                            const TpContext& tp, int layer) const = 0;
  // Final norm: LayerNorm with bias (GPT-2) or RMSNorm (Llama).
  virtual bool final_norm_has_bias() const = 0;
};

const Architecture& architecture(Family f);
// The family of a Hugging Face model_type; throws listing the supported ones.
const Architecture& architecture_for_model_type(std::string_view model_type, const std::string& source);
std::vector<const Architecture*> all_architectures();

// ---- derived from the declarations ----
struct TensorSpec {
  std::string name;
  Shape shape;
};
// Throws, naming what does not divide and the fix, unless tensor parallelism of size tp can
// split the model as declared (heads, the MLP width, key/value heads).
void check_tensor_parallel_split(const ModelConfig& c, int tp);
// Whether the LM head is the token embedding (a parameter declared tied): the pipeline then
// sums the two stages' gradients of it.
bool has_tied_embedding(const ModelConfig& c);
// Every logical parameter in checkpoint order (a tied head once, as its embedding).
std::vector<TensorSpec> model_tensor_specs(const ModelConfig& c);
// How many tensors model_tensor_specs lists, without listing them.
int64_t model_tensor_count(const ModelConfig& c);
// Training FLOPs per token at sequence length T: 6 N + 12 L H T (PaLM, app. B), N the
// declared matmul parameters, H = n_head * head_size the attention width.
double training_flops_per_token(const ModelConfig& c, int64_t T);
// Forward FLOPs of layer `layer` for N = B*T tokens on one of tp ranks: 2 per multiply-add of
// its matmul parameters, plus the attention score/value products counted non-causal.
double layer_forward_flops(const ModelConfig& c, int tp, int64_t B, int64_t T, int layer);
// The same summed over layers [begin, end) (a pipeline stage), one evaluation per layer run.
double layers_forward_flops(const ModelConfig& c, int tp, int64_t B, int64_t T, int begin, int end);
// Forward FLOPs of the LM head for N = B*T tokens on one of tp ranks: the (N, C) x (C, V)
// logits product (V the real vocabulary), which every family's decoder ends with.
double head_forward_flops(const ModelConfig& c, int tp, int64_t B, int64_t T);

// Hugging Face config.json of any family <-> ModelConfig. Reading dispatches on model_type
// (missing, unknown, or contradicted by another family's keys: a clear error naming `source`).
nlohmann::json model_config_to_hf_json(const ModelConfig& c);
ModelConfig model_config_from_hf_json(const nlohmann::json& j, const std::string& source);

}  // namespace trident::nn
