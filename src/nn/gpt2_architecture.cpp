// GPT-2, declared once: Hugging Face's GPT2LMHeadModel (pre-LN blocks, learned positions,
// Conv1D weights [in, out], tanh GELU, LM head tied to wte).
#include <fmt/format.h>

#include <cmath>

#include "core/check.h"
#include "nn/architecture.h"
#include "nn/gpt2_block.h"
#include "nn/gpt2_layer_decls.h"
#include "nn/hf_config_json.h"

namespace trident::nn {
namespace {

class Gpt2Architecture final : public Architecture {
 public:
  Family family() const override { return Family::kGpt2; }

  std::vector<std::string> hf_keys() const override {
    return {"n_layer", "n_head", "n_embd", "n_positions", "n_ctx", "n_inner", "layer_norm_epsilon",
            "activation_function", "scale_attn_weights", "scale_attn_by_inverse_layer_idx",
            "attn_pdrop", "embd_pdrop", "resid_pdrop"};
  }

  nlohmann::json to_hf_json(const ModelConfig& c) const override {
    nlohmann::json j;
    j["model_type"] = "gpt2";
    j["architectures"] = {"GPT2LMHeadModel"};
    j["n_layer"] = c.n_layer;
    j["n_head"] = c.n_head;
    j["n_embd"] = c.n_embd;
    j["n_positions"] = c.n_positions;
    j["n_ctx"] = c.n_positions;
    j["n_inner"] = nullptr;  // 4 * n_embd
    j["vocab_size"] = c.vocab_size;
    j["layer_norm_epsilon"] = 1e-5;
    j["activation_function"] = "gelu_new";
    j["tie_word_embeddings"] = true;
    j["scale_attn_weights"] = true;
    j["initializer_range"] = 0.02;
    // Trident trains without dropout.
    j["attn_pdrop"] = 0.0;
    j["embd_pdrop"] = 0.0;
    j["resid_pdrop"] = 0.0;
    if (c.vocab_size > 50256) {
      j["bos_token_id"] = 50256;
      j["eos_token_id"] = 50256;
    }
    j["torch_dtype"] = "float32";
    j["use_cache"] = true;
    j["trident_vocab_pad_multiple"] = c.vocab_pad_multiple;
    return j;
  }

  ModelConfig from_hf_json(const nlohmann::json& j, const std::string& source) const override {
    ModelConfig c;
    c.family = Family::kGpt2;
    const char* needs = "a GPT-2 config.json needs n_layer, n_head, n_embd, n_positions (or n_ctx) and vocab_size";
    c.n_layer = hf_json_int(j, "n_layer", source, needs);
    c.n_head = hf_json_int(j, "n_head", source, needs);
    c.n_embd = hf_json_int(j, "n_embd", source, needs);
    c.vocab_size = hf_json_int(j, "vocab_size", source, needs);
    c.n_positions = j.contains("n_positions") ? hf_json_int(j, "n_positions", source, needs)
                                              : hf_json_int(j, "n_ctx", source, needs);
    if (j.contains("trident_vocab_pad_multiple")) {
      c.vocab_pad_multiple = hf_json_int(j, "trident_vocab_pad_multiple", source, needs);
    }
    if (j.contains("activation_function")) {
      const auto& a = j["activation_function"];
      TRI_CHECK(a == "gelu_new" || a == "gelu_pytorch_tanh",
                "{} has activation_function {}; Trident implements GPT-2's tanh GELU only "
                "(\"gelu_new\")", source, a.dump());
    }
    if (j.contains("layer_norm_epsilon")) {
      const auto& e = j["layer_norm_epsilon"];
      TRI_CHECK(e.is_number() && std::abs(e.get<double>() - 1e-5) <= 1e-12,
                "{} has layer_norm_epsilon {}; Trident's layernorm uses 1e-5", source, e.dump());
    }
    if (j.contains("tie_word_embeddings")) {
      TRI_CHECK(j["tie_word_embeddings"] == true,
                "{} has tie_word_embeddings {}; Trident's GPT-2 ties the LM head to wte", source,
                j["tie_word_embeddings"].dump());
    }
    if (j.contains("n_inner") && !j["n_inner"].is_null()) {
      const int inner = hf_json_int(j, "n_inner", source, needs);
      TRI_CHECK(inner == 4 * c.n_embd, "{} has n_inner {}; Trident's MLP is 4 * n_embd = {} wide",
                source, inner, 4 * c.n_embd);
    }
    if (j.contains("scale_attn_weights")) {
      TRI_CHECK(j["scale_attn_weights"] == true, "{} has scale_attn_weights false; Trident always "
                "scales attention by 1/sqrt(head_size)", source);
    }
    if (j.contains("scale_attn_by_inverse_layer_idx")) {
      TRI_CHECK(j["scale_attn_by_inverse_layer_idx"] != true,
                "{} has scale_attn_by_inverse_layer_idx true, which Trident does not implement", source);
    }
    return c;
  }

  std::vector<std::string> preset_names() const override { return {"tiny", "small", "gpt2", "gpt2-medium"}; }

  ModelConfig preset(std::string_view name) const override {
    ModelConfig c;
    if (name == "tiny") {
      // 8 layers so every pipeline layout of 8 ranks (and interleaving) has work per stage;
      // a vocabulary that is not a multiple of 64 so padding is always exercised.
      c.n_layer = 8, c.n_head = 4, c.n_embd = 32, c.n_positions = 64, c.vocab_size = 1000;
    } else if (name == "small") {
      c.n_layer = 6, c.n_head = 6, c.n_embd = 384, c.n_positions = 256, c.vocab_size = 50257;
    } else if (name == "gpt2") {
      c.n_layer = 12, c.n_head = 12, c.n_embd = 768, c.n_positions = 1024, c.vocab_size = 50257;
    } else {  // gpt2-medium
      c.n_layer = 24, c.n_head = 16, c.n_embd = 1024, c.n_positions = 1024, c.vocab_size = 50257;
    }
    return c;
  }

  void validate(const ModelConfig& c) const override {
    TRI_CHECK(c.n_kv_head == 0 || c.n_kv_head == c.n_head,
              "GPT-2 has as many key/value heads as heads: n_kv_head {} != n_head {}; grouped-query "
              "attention is a Llama setting (model_type llama)", c.n_kv_head, c.n_head);
    TRI_CHECK(c.n_inner == 0 || c.n_inner == 4 * c.n_embd,
              "GPT-2's MLP is 4 * n_embd = {} wide, not n_inner {}", 4 * static_cast<int64_t>(c.n_embd),
              c.n_inner);
    TRI_CHECK(c.tie_word_embeddings, "GPT-2 ties its LM head to wte (tie_word_embeddings true)");
    TRI_CHECK(std::abs(c.norm_eps - 1e-5) <= 1e-12, "GPT-2's LayerNorm epsilon is 1e-5, not {}", c.norm_eps);
  }

  std::vector<ParamDecl> embedding_params(const ModelConfig& c) const override {
    const int64_t C = c.n_embd;
    ParamDecl wte{.name = "wte.weight", .shape = {c.vocab_size, C}, .split = TpSplit::kVocab,
                  .weight_decay = true, .init_std = 0.02f, .role = ParamRole::kTokenEmbedding,
                  .tied = true, .matmul = true};
    ParamDecl wpe{.name = "wpe.weight", .shape = {c.n_positions, C}, .weight_decay = true,
                  .init_std = 0.02f, .role = ParamRole::kPositionEmbedding};
    return {wte, wpe};
  }

  std::vector<ParamDecl> layer_params(const ModelConfig& c, int layer) const override {
    return gpt2_layer_decls(c, layer).all();
  }
  std::vector<LoraTarget> lora_targets(const ModelConfig& c, int layer) const override {
    return gpt2_layer_decls(c, layer).lora_targets();
  }

  std::vector<ParamDecl> head_params(const ModelConfig& c) const override {
    const int64_t C = c.n_embd;
    return {ParamDecl{.name = "ln_f.weight", .shape = {C}, .init_value = 1.0f, .role = ParamRole::kFinalNormWeight},
            ParamDecl{.name = "ln_f.bias", .shape = {C}, .init_value = 0.0f, .role = ParamRole::kFinalNormBias}};
  }

  bool ignorable_tensor(const ModelConfig&, const std::string& name) const override {
    // Hugging Face's attention mask buffers, and the tied head GPT2LMHeadModel may save.
    if (name == "lm_head.weight") return true;
    const int l = layer_of(name);
    if (l < 0) return false;
    const std::string rest = name.substr(name.find('.', 2) + 1);
    return rest == "attn.bias" || rest == "attn.masked_bias";
  }

  std::string_view hf_alternative_prefix() const override { return "transformer."; }

  int layer_of(const std::string& name) const override { return hf_layer_index(name, "h."); }

  std::vector<ShapeWitness> shape_witnesses(const ModelConfig& c) const override {
    return {{"vocab_size", "wte.weight", 0, c.vocab_size},
            {"n_embd", "wte.weight", 1, c.n_embd},
            {"n_positions", "wpe.weight", 0, c.n_positions}};
  }

  int64_t layer_activation_bytes(const ModelConfig& c, int tp, int64_t B, int64_t T, int64_t local_rows,
                                 int /*layer*/, kernels::Precision storage) const override {
    return TransformerBlock::activation_bytes(gpt2_block_shape(c, tp), c, tp, B, T, local_rows, storage);
  }
  int64_t attention_core_floats(const ModelConfig& c, int tp, int64_t B, int64_t T, int /*layer*/) const override {
    return TransformerBlock::attention_core_floats(gpt2_block_shape(c, tp), B, T);
  }
  int64_t layer_scratch_floats(const ModelConfig& c, int tp, int64_t N, int /*layer*/) const override {
    return TransformerBlock::scratch_floats(gpt2_block_shape(c, tp), N);
  }
  std::unique_ptr<Layer> make_layer(ParameterSet& params, const ModelConfig& c, const TpContext& tp,
                                    int layer) const override {
    return make_gpt2_block(params, c, tp, layer);
  }
  bool final_norm_has_bias() const override { return true; }
};

}  // namespace

Gpt2LayerDecls gpt2_layer_decls(const ModelConfig& c, int layer) {
  const int64_t C = c.n_embd, HS = c.head_size();
  const std::string p = fmt::format("h.{}.", layer);
  const float std_w = 0.02f;
  // GPT-2 scales the residual projections by 1/sqrt(2 * n_layer) (two per block).
  const float std_proj = 0.02f / std::sqrt(2.0f * static_cast<float>(c.n_layer));
  auto norm = [&](const char* n, float v) {
    return ParamDecl{.name = p + n, .shape = {C}, .init_value = v};
  };
  // Column-parallel: output columns split (q, k and v separately, by whole heads).
  auto column = [&](const char* n, Shape shape, int dim, int sections, int64_t unit, bool weight) {
    return ParamDecl{.name = p + n, .shape = std::move(shape), .split = TpSplit::kSplit, .dim = dim,
                     .sections = sections, .unit = unit, .weight_decay = weight,
                     .init_std = weight ? std_w : 0.0f, .matmul = weight, .operand_only = weight,
                     .in_out = weight};
  };
  // Row-parallel: input rows split; the bias is added once, after the sum (replicated).
  auto row = [&](const char* n, int64_t rows, int64_t unit) {
    return ParamDecl{.name = p + n, .shape = {rows, C}, .split = TpSplit::kSplit, .dim = 0,
                     .unit = unit, .weight_decay = true, .init_std = std_proj, .matmul = true, .operand_only = true,
                     .in_out = true};
  };
  return {.ln_1_weight = norm("ln_1.weight", 1.0f),
          .ln_1_bias = norm("ln_1.bias", 0.0f),
          .c_attn_weight = column("attn.c_attn.weight", {C, 3 * C}, 1, 3, HS, true),
          .c_attn_bias = column("attn.c_attn.bias", {3 * C}, 0, 3, HS, false),
          .attn_c_proj_weight = row("attn.c_proj.weight", C, HS),
          .attn_c_proj_bias = norm("attn.c_proj.bias", 0.0f),
          .ln_2_weight = norm("ln_2.weight", 1.0f),
          .ln_2_bias = norm("ln_2.bias", 0.0f),
          .c_fc_weight = column("mlp.c_fc.weight", {C, 4 * C}, 1, 1, 1, true),
          .c_fc_bias = column("mlp.c_fc.bias", {4 * C}, 0, 1, 1, false),
          .mlp_c_proj_weight = row("mlp.c_proj.weight", 4 * C, 1),
          .mlp_c_proj_bias = norm("mlp.c_proj.bias", 0.0f)};
}

const Architecture& gpt2_architecture() {
  static const Gpt2Architecture arch;  // immutable: a declaration, not state
  return arch;
}

}  // namespace trident::nn
