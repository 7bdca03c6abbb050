// Mixtral, declared once: Hugging Face's MixtralForCausalLM is Llama (nn/llama_architecture.cpp:
// RMSNorm, rotary positions, grouped-query attention) with each layer's dense MLP replaced by a
// sparse mixture of SwiGLU experts (`block_sparse_moe`: a router `gate` [E, C] and experts
// w1 = gate_proj [I, C], w3 = up_proj [I, C], w2 = down_proj [C, I]); nn/moe_mlp.h computes it.
// Everything Llama declares is taken from the Llama declaration; only the MLP differs.
// DeepSeek-V3's layer mix on top (docs/moe.md): the first first_k_dense_replace layers keep
// Llama's dense MLP, and the MoE layers may add n_shared_experts shared experts (one SwiGLU).
#include <fmt/format.h>

#include <cmath>
#include <limits>

#include "core/check.h"
#include "nn/hf_config_json.h"
#include "nn/llama_block_architecture.h"
#include "nn/llama_layer_decls.h"
#include "nn/mixtral_layer_decls.h"

namespace trident::nn {

const Architecture& llama_architecture();  // llama_architecture.cpp

namespace {

constexpr const char* kNeeds =
    "a Mixtral config.json needs num_local_experts and num_experts_per_tok besides Llama's keys";

class MixtralArchitecture final : public LlamaBlockArchitecture {
 public:
  Family family() const override { return Family::kMixtral; }

  std::vector<std::string> hf_keys() const override {
    std::vector<std::string> keys = llama().hf_keys();
    for (const char* k : {"num_local_experts", "num_experts_per_tok", "router_aux_loss_coef",
                          "router_z_loss_coef", "router_bias_update_rate", "expert_capacity_factor",
                          "output_router_logits", "router_jitter_noise", "sliding_window",
                          "first_k_dense_replace", "n_shared_experts", "moe_intermediate_size", "scoring_func",
                          "routed_scaling_factor", "n_group", "topk_group"}) {
      keys.emplace_back(k);
    }
    return keys;
  }

  nlohmann::json to_hf_json(const ModelConfig& c) const override {
    nlohmann::json j = llama().to_hf_json(c);
    j["model_type"] = "mixtral";
    j["architectures"] = {"MixtralForCausalLM"};
    for (const char* k : {"attention_bias", "mlp_bias", "pretraining_tp"}) j.erase(k);
    j["num_local_experts"] = c.n_experts;
    j["num_experts_per_tok"] = c.n_experts_per_tok;
    j["router_aux_loss_coef"] = c.router_aux_loss_coef;
    // Not a key of Hugging Face's Mixtral (Switch Transformers' name): written only when used.
    if (c.router_z_loss_coef > 0) j["router_z_loss_coef"] = c.router_z_loss_coef;
    // Trident's (nn/moe_router.h), written only when used. A config.json with the bias rate
    // says its model.safetensors holds the selection bias (e_score_correction_bias).
    if (c.router_bias_update_rate > 0) j["router_bias_update_rate"] = c.router_bias_update_rate;
    if (c.expert_capacity_factor > 0) j["expert_capacity_factor"] = c.expert_capacity_factor;
    j["output_router_logits"] = false;
    j["router_jitter_noise"] = 0.0;
    j["sliding_window"] = nullptr;
    // Qwen2-MoE's key; Hugging Face's Mixtral always renormalises (true).
    j["norm_topk_prob"] = c.norm_topk_prob;
    // DeepSeek-V3's keys (not Mixtral's, whose config would ignore them): written only when used.
    if (c.first_k_dense > 0) j["first_k_dense_replace"] = c.first_k_dense;
    if (c.n_shared_experts > 0) j["n_shared_experts"] = c.n_shared_experts;
    // Qwen2-MoE's and DeepSeek's (the experts' width apart from intermediate_size) and DeepSeek-V3's
    // router: written only when they differ from Mixtral's meaning.
    if (c.moe_inner > 0) j["moe_intermediate_size"] = c.moe_inner;
    if (c.scoring != RouterScoring::kSoftmax) j["scoring_func"] = scoring_name(c.scoring);
    if (c.routed_scaling_factor != 1.0) j["routed_scaling_factor"] = c.routed_scaling_factor;
    if (c.n_group > 1) j["n_group"] = c.n_group, j["topk_group"] = c.topk_group;
    return j;
  }

  ModelConfig from_hf_json(const nlohmann::json& j, const std::string& source) const override {
    ModelConfig c = llama().from_hf_json(j, source);
    c.family = Family::kMixtral;
    c.n_experts = hf_json_int(j, "num_local_experts", source, kNeeds);
    c.n_experts_per_tok = hf_json_int(j, "num_experts_per_tok", source, kNeeds);
    c.router_aux_loss_coef = hf_json_number(j, "router_aux_loss_coef", source, 0.001);
    c.router_z_loss_coef = hf_json_number(j, "router_z_loss_coef", source, 0.0);
    c.router_bias_update_rate = hf_json_number(j, "router_bias_update_rate", source, 0.0);
    c.expert_capacity_factor = hf_json_number(j, "expert_capacity_factor", source, 0.0);
    c.norm_topk_prob = hf_json_bool(j, "norm_topk_prob", source, true);
    if (j.contains("first_k_dense_replace")) c.first_k_dense = hf_json_int(j, "first_k_dense_replace", source, kNeeds);
    if (j.contains("n_shared_experts")) {
      // DeepSeek writes null for none.
      c.n_shared_experts = j["n_shared_experts"].is_null() ? 0 : hf_json_int(j, "n_shared_experts", source, kNeeds);
    }
    if (j.contains("moe_intermediate_size") && !j["moe_intermediate_size"].is_null()) {
      c.moe_inner = hf_json_int(j, "moe_intermediate_size", source, kNeeds);
      TRI_CHECK(c.moe_inner > 0, "{} has moe_intermediate_size {}: each routed expert's width must be positive",
                source, c.moe_inner);
    }
    if (j.contains("scoring_func")) {
      const nlohmann::json& f = j["scoring_func"];
      TRI_CHECK(f.is_string() && (f == "softmax" || f == "sigmoid"),
                "{} has scoring_func {}: Trident's router scores experts by \"softmax\" (Mixtral) or "
                "\"sigmoid\" (DeepSeek-V3)", source, f.dump());
      c.scoring = f == "sigmoid" ? RouterScoring::kSigmoid : RouterScoring::kSoftmax;
    }
    c.routed_scaling_factor = hf_json_number(j, "routed_scaling_factor", source, 1.0);
    // DeepSeek writes null or 1 for no group limit.
    if (j.contains("n_group") && !j["n_group"].is_null()) c.n_group = hf_json_int(j, "n_group", source, kNeeds);
    if (j.contains("topk_group") && !j["topk_group"].is_null()) {
      c.topk_group = hf_json_int(j, "topk_group", source, kNeeds);
    } else {
      c.topk_group = c.n_group;
    }
    if (c.n_group <= 1) c.n_group = 1, c.topk_group = 1;  // one group: every expert eligible
    TRI_CHECK(hf_json_number(j, "router_jitter_noise", source, 0.0) == 0.0,
              "{} has router_jitter_noise {}: Trident's router is deterministic (the same routing in "
              "every layout); set it to 0", source, j["router_jitter_noise"].dump());
    TRI_CHECK(!j.contains("sliding_window") || j["sliding_window"].is_null(),
              "{} has sliding_window {}: Trident's attention is full causal; set it to null", source,
              j.contains("sliding_window") ? j["sliding_window"].dump() : "");
    return c;
  }

  std::vector<std::string> preset_names() const override { return {"mixtral-tiny", "mixtral-small"}; }

  ModelConfig preset(std::string_view name) const override {
    ModelConfig c = llama().preset(name == "mixtral-tiny" ? "llama-tiny" : "llama-small");
    c.family = Family::kMixtral;
    if (name == "mixtral-tiny") {
      // llama-tiny's attention with 4 experts of width 48, top-2: fast in 8-rank tests, an
      // expert width tp 2 and 4 split, and an aux coefficient large enough to matter.
      c.n_layer = 4, c.n_inner = 48, c.n_experts = 4, c.n_experts_per_tok = 2;
      c.router_aux_loss_coef = 0.01;
    } else {  // mixtral-small: llama-small's shape with 8 experts of width 512, top-2
      c.n_inner = 512, c.n_experts = 8, c.n_experts_per_tok = 2, c.router_aux_loss_coef = 0.01;
    }
    return c;
  }

  void validate(const ModelConfig& c) const override {
    llama().validate(c);
    TRI_CHECK(c.n_experts >= 1, "a Mixtral model needs num_local_experts >= 1 (the experts of each "
              "layer's MLP), got {}", c.n_experts);
    TRI_CHECK(c.n_experts_per_tok >= 1 && c.n_experts_per_tok <= c.n_experts,
              "num_experts_per_tok {} must be between 1 and num_local_experts {}: each token is routed "
              "to k distinct experts of the E a layer has", c.n_experts_per_tok, c.n_experts);
    TRI_CHECK(c.router_aux_loss_coef >= 0, "router_aux_loss_coef must be >= 0, got {}",
              c.router_aux_loss_coef);
    TRI_CHECK(c.router_z_loss_coef >= 0, "router_z_loss_coef must be >= 0, got {}", c.router_z_loss_coef);
    TRI_CHECK(c.router_bias_update_rate >= 0 && std::isfinite(c.router_bias_update_rate),
              "router_bias_update_rate (--moe-bias-update-rate) must be >= 0 (0: no aux-free balancing "
              "bias; DeepSeek-V3 used 0.001), got {}", c.router_bias_update_rate);
    TRI_CHECK(c.expert_capacity_factor >= 0 && std::isfinite(c.expert_capacity_factor),
              "expert_capacity_factor (--moe-capacity-factor) must be >= 0 (0: dropless; 1.0 keeps "
              "ceil(T k / E) tokens per expert and sequence), got {}", c.expert_capacity_factor);
    TRI_CHECK(c.first_k_dense >= 0 && c.first_k_dense < c.n_layer,
              "first_k_dense_replace (--moe-first-k-dense) {} must be between 0 and n_layer - 1 = {}: layers "
              "[0, k) keep a dense MLP and at least one layer must have experts (a model without any is a "
              "llama)", c.first_k_dense, c.n_layer - 1);
    TRI_CHECK(c.moe_inner >= 0, "moe_intermediate_size (--moe-inner) must be positive (or 0: the experts are "
              "intermediate_size wide), got {}", c.moe_inner);
    TRI_CHECK(c.n_shared_experts >= 0 && c.n_shared_experts <= std::numeric_limits<int>::max() / c.expert_width(),
              "n_shared_experts (--moe-shared-experts) must be between 0 and {} (their SwiGLU of width "
              "n_shared_experts x the experts' width {} must fit a 32-bit int), got {}",
              std::numeric_limits<int>::max() / c.expert_width(), c.expert_width(), c.n_shared_experts);
    TRI_CHECK(c.routed_scaling_factor > 0 && std::isfinite(c.routed_scaling_factor),
              "routed_scaling_factor must be positive (it multiplies the routing weights; 1: none, DeepSeek-V3 "
              "2.5), got {}", c.routed_scaling_factor);
    TRI_CHECK(c.n_group >= 1 && c.n_experts % c.n_group == 0 && c.n_experts / c.n_group >= (c.n_group > 1 ? 2 : 1),
              "n_group {} must divide num_local_experts {} into groups of at least 2 experts (a group's score is "
              "the sum of its 2 best; n_group 1: no group limit)", c.n_group, c.n_experts);
    TRI_CHECK(c.topk_group >= 1 && c.topk_group <= c.n_group &&
                  static_cast<int64_t>(c.topk_group) * (c.n_experts / c.n_group) >= c.n_experts_per_tok,
              "topk_group {} must be between 1 and n_group {}, and its groups must hold at least num_experts_per_tok "
              "{} experts ({} each): a token chooses its k experts among the best topk_group groups",
              c.topk_group, c.n_group, c.n_experts_per_tok, c.n_experts / std::max(c.n_group, 1));
    TRI_CHECK(c.scoring == RouterScoring::kSoftmax || c.router_z_loss_coef == 0,
              "router_z_loss_coef (--moe-z-loss-coef) {} is a softmax router's regulariser (logsumexp of the logits); "
              "this model's scoring_func is sigmoid: set it to 0", c.router_z_loss_coef);
  }

  std::vector<LayerRun> layer_runs(const ModelConfig& c) const override {
    if (c.first_k_dense <= 0 || c.first_k_dense >= c.n_layer) return {{0, c.n_layer}};
    return {{0, c.first_k_dense}, {c.first_k_dense, c.n_layer}};
  }

  std::vector<ParamDecl> embedding_params(const ModelConfig& c) const override { return llama().embedding_params(c); }

  std::vector<ParamDecl> layer_params(const ModelConfig& c, int layer) const override {
    // Llama's attention and norms; its dense MLP becomes the router and the experts, except in
    // the first_k_dense layers (DeepSeek-V3's first_k_dense_replace), which keep it.
    if (!c.layer_is_moe(layer)) return llama_layer_decls(c, layer).all();
    std::vector<ParamDecl> v = llama_layer_decls(c, layer).all(/*with_mlp=*/false);
    const int64_t C = c.n_embd, I = c.expert_width();
    const std::string p = fmt::format("model.layers.{}.block_sparse_moe.", layer);
    // The router is replicated over tp (every rank routes every token alike).
    v.push_back(ParamDecl{.name = p + "gate.weight", .shape = {c.n_experts, C}, .weight_decay = true,
                          .init_std = 0.02f, .matmul = true, .keep_fp32 = true});
    for (int e = 0; e < c.n_experts; ++e) {
      auto linear = [&](const char* n, int64_t out, int64_t in, int dim) {
        return ParamDecl{.name = fmt::format("{}experts.{}.{}", p, e, n), .shape = {out, in},
                         .split = TpSplit::kSplit, .dim = dim, .weight_decay = true, .init_std = 0.02f,
                         .matmul = true, .operand_only = true, .expert = e};
      };
      // As the dense MLP: w1/w3 column-parallel, w2 row-parallel.
      v.push_back(linear("w1.weight", I, C, 0));
      v.push_back(linear("w2.weight", C, I, 1));
      v.push_back(linear("w3.weight", I, C, 0));
    }
    if (const std::optional<SharedExpertDecls> sh = shared_expert_decls(c, layer)) {
      v.insert(v.end(), {sh->gate_proj, sh->up_proj, sh->down_proj});
    }
    return v;
  }

  std::vector<ParamDecl> head_params(const ModelConfig& c) const override { return llama().head_params(c); }
  // The attention projections only: an adapter per expert (and a router that would then be
  // trained on a frozen MLP) is a different method (MoLA / PEFT's per-expert targets) not done here.
  std::vector<LoraTarget> lora_targets(const ModelConfig& c, int layer) const override {
    return llama_layer_decls(c, layer).lora_targets(/*with_mlp=*/false);
  }
  std::string lora_unsupported(const std::string& target) const override {
    for (const char* n : {"gate", "up", "down", "w1", "w2", "w3"}) {
      if (target == n) {
        return "Mixtral's MLP is its experts, which take no adapters here; target the attention projections "
               "(q,k,v,o)";
      }
    }
    return "";
  }
  bool ignorable_tensor(const ModelConfig& c, const std::string& name) const override {
    return llama().ignorable_tensor(c, name);
  }
  int layer_of(const std::string& name) const override { return llama().layer_of(name); }

  std::vector<ShapeWitness> shape_witnesses(const ModelConfig& c) const override {
    std::vector<ShapeWitness> w;
    for (ShapeWitness& s : llama().shape_witnesses(c)) {  // Llama's names layer 0's dense MLP
      if (s.field != "intermediate_size" || c.first_k_dense > 0) w.push_back(std::move(s));
    }
    // The first MoE layer's (layer 0 is dense with first_k_dense).
    const std::string p = fmt::format("model.layers.{}.block_sparse_moe.", c.first_k_dense);
    w.push_back({"num_local_experts", p + "gate.weight", 0, c.n_experts});
    w.push_back({c.moe_inner > 0 ? "moe_intermediate_size" : "intermediate_size", p + "experts.0.w1.weight", 0,
                 c.expert_width()});
    if (c.n_shared_experts > 0) {
      w.push_back({"n_shared_experts * moe_intermediate_size", p + "shared_experts.gate_proj.weight", 0,
                   c.shared_expert_width()});
    }
    return w;
  }

 private:
  static const Architecture& llama() { return llama_architecture(); }
};

}  // namespace

std::optional<SharedExpertDecls> shared_expert_decls(const ModelConfig& c, int layer) {
  if (c.n_shared_experts <= 0 || !c.layer_is_moe(layer)) return std::nullopt;
  // DeepSeek's names (mlp.shared_experts.{gate,up,down}_proj) under Mixtral's module name for
  // the layer's MoE (block_sparse_moe, beside its gate and experts): renaming a DeepSeek
  // checkpoint's is a prefix change. Split over tp like the dense MLP (gate/up by columns, down
  // by rows); no `expert` index: a dense parameter, replicated over ep, reduced over all of dp.
  const int64_t C = c.n_embd, I = c.shared_expert_width();
  const std::string p = fmt::format("model.layers.{}.block_sparse_moe.shared_experts.", layer);
  auto linear = [&](const char* n, int64_t out, int64_t in, int dim) {
    return ParamDecl{.name = p + n, .shape = {out, in}, .split = TpSplit::kSplit, .dim = dim, .weight_decay = true,
                     .init_std = 0.02f, .matmul = true, .operand_only = true};
  };
  return SharedExpertDecls{.gate_proj = linear("gate_proj.weight", I, C, 0),
                           .up_proj = linear("up_proj.weight", I, C, 0),
                           .down_proj = linear("down_proj.weight", C, I, 1)};
}

const Architecture& mixtral_architecture() {
  static const MixtralArchitecture arch;  // immutable: a declaration, not state
  return arch;
}

}  // namespace trident::nn
