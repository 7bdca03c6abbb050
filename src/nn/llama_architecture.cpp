// Llama, declared once: Hugging Face's LlamaForCausalLM (RMSNorm, rotary positions,
// grouped-query attention, SwiGLU MLP, nn.Linear weights [out, in], no biases, lm_head untied
// unless tie_word_embeddings).
#include <fmt/format.h>

#include <cmath>

#include "core/check.h"
#include "nn/hf_config_json.h"
#include "nn/llama_block_architecture.h"
#include "nn/llama_layer_decls.h"

namespace trident::nn {
namespace {

constexpr const char* kNeeds =
    "a Llama config.json needs hidden_size, intermediate_size, num_hidden_layers, "
    "num_attention_heads, max_position_embeddings and vocab_size";

class LlamaArchitecture final : public LlamaBlockArchitecture {
 public:
  Family family() const override { return Family::kLlama; }

  std::vector<std::string> hf_keys() const override {
    return {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_theta",
            "rope_scaling", "hidden_act", "attention_bias", "mlp_bias", "head_dim", "pretraining_tp"};
  }

  nlohmann::json to_hf_json(const ModelConfig& c) const override {
    nlohmann::json j;
    j["model_type"] = "llama";
    j["architectures"] = {"LlamaForCausalLM"};
    j["hidden_size"] = c.n_embd;
    j["intermediate_size"] = c.mlp_width();
    j["num_hidden_layers"] = c.n_layer;
    j["num_attention_heads"] = c.n_head;
    j["num_key_value_heads"] = c.kv_heads();
    j["head_dim"] = c.head_size();
    j["max_position_embeddings"] = c.n_positions;
    j["vocab_size"] = c.vocab_size;
    j["rms_norm_eps"] = c.norm_eps;
    j["rope_theta"] = c.rope_theta;
    j["rope_scaling"] = nullptr;
    j["tie_word_embeddings"] = c.tie_word_embeddings;
    j["hidden_act"] = "silu";
    j["attention_bias"] = false;
    j["attention_dropout"] = 0.0;
    j["mlp_bias"] = false;
    j["pretraining_tp"] = 1;
    j["initializer_range"] = 0.02;
    j["torch_dtype"] = "float32";
    j["use_cache"] = true;
    j["trident_vocab_pad_multiple"] = c.vocab_pad_multiple;
    return j;
  }

  ModelConfig from_hf_json(const nlohmann::json& j, const std::string& source) const override {
    ModelConfig c;
    c.family = Family::kLlama;
    c.n_embd = hf_json_int(j, "hidden_size", source, kNeeds);
    c.n_inner = hf_json_int(j, "intermediate_size", source, kNeeds);
    c.n_layer = hf_json_int(j, "num_hidden_layers", source, kNeeds);
    c.n_head = hf_json_int(j, "num_attention_heads", source, kNeeds);
    // Hugging Face: num_key_value_heads missing or null means multi-head attention.
    c.n_kv_head = j.contains("num_key_value_heads") && !j["num_key_value_heads"].is_null()
                      ? hf_json_int(j, "num_key_value_heads", source, kNeeds)
                      : c.n_head;
    c.n_positions = hf_json_int(j, "max_position_embeddings", source, kNeeds);
    c.vocab_size = hf_json_int(j, "vocab_size", source, kNeeds);
    c.norm_eps = hf_json_number(j, "rms_norm_eps", source, 1e-6);
    c.rope_theta = hf_json_number(j, "rope_theta", source, 10000.0);
    c.tie_word_embeddings = hf_json_bool(j, "tie_word_embeddings", source, false);
    if (j.contains("trident_vocab_pad_multiple")) {
      c.vocab_pad_multiple = hf_json_int(j, "trident_vocab_pad_multiple", source, kNeeds);
    }
    if (j.contains("hidden_act")) {
      TRI_CHECK(j["hidden_act"] == "silu", "{} has hidden_act {}; Trident's Llama MLP is SwiGLU with silu",
                source, j["hidden_act"].dump());
    }
    TRI_CHECK(!hf_json_bool(j, "attention_bias", source, false),
              "{} has attention_bias true; Trident's Llama projections have no biases", source);
    TRI_CHECK(!hf_json_bool(j, "mlp_bias", source, false),
              "{} has mlp_bias true; Trident's Llama projections have no biases", source);
    TRI_CHECK(!j.contains("rope_scaling") || j["rope_scaling"].is_null(),
              "{} has rope_scaling {}: Trident implements plain rotary embeddings (rope_theta only), "
              "not scaled variants (Llama 3.1's \"llama3\", linear, dynamic, yarn); remove "
              "rope_scaling to train at the base context", source, j.contains("rope_scaling") ? j["rope_scaling"].dump() : "");
    if (j.contains("head_dim") && !j["head_dim"].is_null() && c.n_head > 0) {
      const int hd = hf_json_int(j, "head_dim", source, kNeeds);
      TRI_CHECK(hd * c.n_head == c.n_embd,
                "{} has head_dim {} but hidden_size / num_attention_heads is {}; Trident needs "
                "head_dim * num_attention_heads == hidden_size", source, hd, c.n_embd / c.n_head);
    }
    return c;
  }

  std::vector<std::string> preset_names() const override { return {"llama-tiny", "llama-small", "llama-1b"}; }

  ModelConfig preset(std::string_view name) const override {
    ModelConfig c;
    c.family = Family::kLlama;
    c.norm_eps = 1e-5;
    if (name == "llama-tiny") {
      // Grouped-query (2 kv heads for 4 query heads), untied, an MLP width that is not a
      // multiple of C, a vocabulary that needs padding: every path is exercised.
      c.n_layer = 8, c.n_head = 4, c.n_kv_head = 2, c.n_embd = 32, c.n_inner = 88;
      c.n_positions = 64, c.vocab_size = 1000, c.tie_word_embeddings = false;
    } else if (name == "llama-small") {
      // ~30M with GPT-2's vocabulary and tied embeddings: learns on Austen in minutes.
      c.n_layer = 6, c.n_head = 6, c.n_kv_head = 2, c.n_embd = 384, c.n_inner = 1024;
      c.n_positions = 1024, c.vocab_size = 50257, c.tie_word_embeddings = true;
    } else {  // llama-1b: Llama 3.2 1B's shapes, for plan and memory figures
      c.n_layer = 16, c.n_head = 32, c.n_kv_head = 8, c.n_embd = 2048, c.n_inner = 8192;
      c.n_positions = 8192, c.vocab_size = 128256, c.tie_word_embeddings = true;
      c.rope_theta = 500000.0;
    }
    return c;
  }

  void validate(const ModelConfig& c) const override {
    TRI_CHECK(c.n_inner > 0, "a Llama model needs its MLP width (intermediate_size / --n-inner)");
    TRI_CHECK(c.kv_heads() <= c.n_head && c.n_head % c.kv_heads() == 0,
              "num_key_value_heads {} must divide num_attention_heads {} (each key/value head serves "
              "a contiguous group of query heads)", c.kv_heads(), c.n_head);
    TRI_CHECK(c.head_size() % 2 == 0, "rotary embeddings need an even head size, got {} (hidden_size {} / "
              "{} heads)", c.head_size(), c.n_embd, c.n_head);
    TRI_CHECK(c.norm_eps > 0 && c.norm_eps < 1, "rms_norm_eps must be in (0, 1), got {}", c.norm_eps);
    TRI_CHECK(c.rope_theta > 1, "rope_theta must be > 1, got {}", c.rope_theta);
  }

  std::vector<ParamDecl> embedding_params(const ModelConfig& c) const override {
    return {ParamDecl{.name = "model.embed_tokens.weight", .shape = {c.vocab_size, c.n_embd},
                      .split = TpSplit::kVocab, .weight_decay = true, .init_std = 0.02f,
                      .role = ParamRole::kTokenEmbedding, .tied = c.tie_word_embeddings,
                      .matmul = c.tie_word_embeddings}};
  }

  std::vector<ParamDecl> layer_params(const ModelConfig& c, int layer) const override {
    return llama_layer_decls(c, layer).all();
  }
  std::vector<LoraTarget> lora_targets(const ModelConfig& c, int layer) const override {
    return llama_layer_decls(c, layer).lora_targets();
  }

  std::vector<ParamDecl> head_params(const ModelConfig& c) const override {
    std::vector<ParamDecl> v{ParamDecl{.name = "model.norm.weight", .shape = {c.n_embd}, .init_value = 1.0f,
                                       .role = ParamRole::kFinalNormWeight}};
    if (!c.tie_word_embeddings) {
      v.push_back(ParamDecl{.name = "lm_head.weight", .shape = {c.vocab_size, c.n_embd},
                            .split = TpSplit::kVocab, .weight_decay = true, .init_std = 0.02f,
                            .role = ParamRole::kLmHead, .matmul = true, .operand_only = true});
    }
    return v;
  }

  bool ignorable_tensor(const ModelConfig& c, const std::string& name) const override {
    // Older checkpoints save the rotary inv_freq buffer; a tied model may still hold lm_head.
    if (name.ends_with(".self_attn.rotary_emb.inv_freq")) return layer_of(name) >= 0;
    return c.tie_word_embeddings && name == "lm_head.weight";
  }

  int layer_of(const std::string& name) const override { return hf_layer_index(name, "model.layers."); }

  std::vector<ShapeWitness> shape_witnesses(const ModelConfig& c) const override {
    const std::string p = "model.layers.0.";
    return {{"vocab_size", "model.embed_tokens.weight", 0, c.vocab_size},
            {"hidden_size", "model.embed_tokens.weight", 1, c.n_embd},
            {"intermediate_size", p + "mlp.gate_proj.weight", 0, c.mlp_width()},
            {"num_key_value_heads * head_dim", p + "self_attn.k_proj.weight", 0,
             static_cast<int64_t>(c.kv_heads()) * c.head_size()}};
  }
};

}  // namespace

LlamaLayerDecls llama_layer_decls(const ModelConfig& c, int layer) {
  const int64_t C = c.n_embd, HS = c.head_size(), Q = c.n_head * HS, KV = c.kv_heads() * HS;
  const int64_t I = c.mlp_width();
  const std::string p = fmt::format("model.layers.{}.", layer);
  auto norm = [&](const char* n) { return ParamDecl{.name = p + n, .shape = {C}, .init_value = 1.0f}; };
  // nn.Linear [out, in]: column-parallel splits dim 0 (outputs), row-parallel dim 1 (inputs).
  auto linear = [&](const char* n, int64_t out, int64_t in, TpSplit split, int dim, int64_t unit) {
    return ParamDecl{.name = p + n, .shape = {out, in}, .split = split, .dim = dim, .unit = unit,
                     .weight_decay = true, .init_std = 0.02f, .matmul = true, .operand_only = true};
  };
  return {.input_norm = norm("input_layernorm.weight"),
          .q_proj = linear("self_attn.q_proj.weight", Q, C, TpSplit::kSplit, 0, HS),
          .k_proj = linear("self_attn.k_proj.weight", KV, C, TpSplit::kKvHeads, 0, HS),
          .v_proj = linear("self_attn.v_proj.weight", KV, C, TpSplit::kKvHeads, 0, HS),
          .o_proj = linear("self_attn.o_proj.weight", C, Q, TpSplit::kSplit, 1, HS),
          .post_attention_norm = norm("post_attention_layernorm.weight"),
          .gate_proj = linear("mlp.gate_proj.weight", I, C, TpSplit::kSplit, 0, 1),
          .up_proj = linear("mlp.up_proj.weight", I, C, TpSplit::kSplit, 0, 1),
          .down_proj = linear("mlp.down_proj.weight", C, I, TpSplit::kSplit, 1, 1)};
}

const Architecture& llama_architecture() {
  static const LlamaArchitecture arch;  // immutable: a declaration, not state
  return arch;
}

}  // namespace trident::nn
