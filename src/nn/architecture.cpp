// The registry of families and everything derived from their declarations.
#include "nn/architecture.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

#include "core/check.h"

namespace trident::nn {

const Architecture& gpt2_architecture();   // gpt2_architecture.cpp
const Architecture& llama_architecture();  // llama_architecture.cpp
const Architecture& mixtral_architecture();  // mixtral_architecture.cpp

std::vector<const Architecture*> all_architectures() {
  return {&gpt2_architecture(), &llama_architecture(), &mixtral_architecture()};
}

const Architecture& architecture(Family f) {
  switch (f) {
    case Family::kLlama: return llama_architecture();
    case Family::kMixtral: return mixtral_architecture();
    case Family::kGpt2: break;
  }
  return gpt2_architecture();
}

std::string_view family_name(Family f) {
  switch (f) {
    case Family::kLlama: return "llama";
    case Family::kMixtral: return "mixtral";
    case Family::kGpt2: break;
  }
  return "gpt2";
}

std::string_view scoring_name(RouterScoring s) { return s == RouterScoring::kSigmoid ? "sigmoid" : "softmax"; }

const Architecture& architecture_for_model_type(std::string_view model_type, const std::string& source) {
  std::vector<std::string> known;
  for (const Architecture* a : all_architectures()) {
    if (family_name(a->family()) == model_type) return *a;
    known.emplace_back(family_name(a->family()));
  }
  TRI_FAIL("{} has model_type \"{}\", which Trident does not implement; supported: {} (see docs/DESIGN.md, "
           "\"Adding an architecture\")", source, model_type, fmt::join(known, ", "));
}

namespace {

int64_t checked_mul(int64_t a, int64_t b, const ModelConfig& c) {
  int64_t r = 0;
  TRI_CHECK(!__builtin_mul_overflow(a, b, &r),
            "the model ({}) has more than 2^63 parameters; no machine can hold it: choose a smaller shape",
            fmt::format("n_layer={} n_embd={} vocab_size={}", c.n_layer, c.n_embd, c.vocab_size));
  return r;
}
int64_t checked_add(int64_t a, int64_t b, const ModelConfig& c) {
  int64_t r = 0;
  TRI_CHECK(!__builtin_add_overflow(a, b, &r),
            "the model ({}) has more than 2^63 parameters; no machine can hold it: choose a smaller shape",
            fmt::format("n_layer={} n_embd={} vocab_size={}", c.n_layer, c.n_embd, c.vocab_size));
  return r;
}
int64_t decl_numel(const std::vector<ParamDecl>& decls, const ModelConfig& c, bool matmul_only) {
  int64_t n = 0;
  for (const ParamDecl& d : decls) {
    if (matmul_only && !d.matmul) continue;
    // Active parameters: a token multiplies with k of the E experts' weights (k/E of the
    // E experts' total = one expert's weight counted for k of the E declarations).
    if (matmul_only && d.expert >= c.n_experts_per_tok) continue;
    int64_t e = 1;
    for (int64_t s : d.shape) e = checked_mul(e, s, c);
    n = checked_add(n, e, c);
  }
  return n;
}
int64_t declared_numel(const ModelConfig& c, bool matmul_only) {
  const Architecture& a = architecture(c.family);
  int64_t n = checked_add(decl_numel(a.embedding_params(c), c, matmul_only),
                          decl_numel(a.head_params(c), c, matmul_only), c);
  for (const Architecture::LayerRun& r : a.layer_runs(c)) {
    n = checked_add(n, checked_mul(r.end - r.begin, decl_numel(a.layer_params(c, r.begin), c, matmul_only), c), c);
  }
  return n;
}

}  // namespace

int64_t ModelConfig::num_parameters() const { return declared_numel(*this, false); }

void check_tensor_parallel_split(const ModelConfig& c, int tp) {
  TRI_CHECK(c.n_head % tp == 0,
            "n_head ({}) is not divisible by tp ({}): tensor parallelism gives each rank whole "
            "attention heads; choose a tp that divides {}",
            c.n_head, tp, c.n_head);
  TRI_CHECK(c.mlp_width() % tp == 0,
            "the MLP width ({}) is not divisible by tp ({}): the MLP is split by columns; "
            "choose a tp that divides {}",
            c.mlp_width(), tp, c.mlp_width());
  TRI_CHECK(!c.is_moe() || c.expert_width() % tp == 0,
            "the experts' width (moe_intermediate_size {}) is not divisible by tp ({}): each expert is "
            "split by columns like the dense MLP; choose a tp that divides {}",
            c.expert_width(), tp, c.expert_width());
  // Everything else the declarations say about splitting (key/value heads vs tp): slicing one
  // layer for rank 0 throws naming the parameter and the fix.
  const Architecture& a = architecture(c.family);
  for (const Architecture::LayerRun& r : a.layer_runs(c)) {
    for (const ParamDecl& d : a.layer_params(c, r.begin)) (void)shard_for_tp(d, c, 0, tp);
  }
}

bool has_tied_embedding(const ModelConfig& c) {
  for (const ParamDecl& d : architecture(c.family).embedding_params(c)) {
    if (d.tied) return true;
  }
  return false;
}

std::vector<TensorSpec> model_tensor_specs(const ModelConfig& c) {
  const Architecture& a = architecture(c.family);
  std::vector<TensorSpec> specs;
  auto add = [&](const std::vector<ParamDecl>& decls) {
    for (const ParamDecl& d : decls) specs.push_back({d.name, d.shape});
  };
  add(a.embedding_params(c));
  for (int l = 0; l < c.n_layer; ++l) add(a.layer_params(c, l));
  add(a.head_params(c));
  return specs;
}

int64_t model_tensor_count(const ModelConfig& c) {
  const Architecture& a = architecture(c.family);
  int64_t n = static_cast<int64_t>(a.embedding_params(c).size()) + static_cast<int64_t>(a.head_params(c).size());
  for (const Architecture::LayerRun& r : a.layer_runs(c)) {
    n += static_cast<int64_t>(r.end - r.begin) * static_cast<int64_t>(a.layer_params(c, r.begin).size());
  }
  return n;
}

double training_flops_per_token(const ModelConfig& c, int64_t T) {
  const double n = static_cast<double>(declared_numel(c, true));
  const double attention_width = static_cast<double>(c.n_head) * c.head_size();
  return 6.0 * n + 12.0 * c.n_layer * attention_width * static_cast<double>(T);
}

double layers_forward_flops(const ModelConfig& c, int tp, int64_t B, int64_t T, int begin, int end) {
  double f = 0;
  for (const Architecture::LayerRun& r : architecture(c.family).layer_runs(c)) {
    const int lo = std::max(r.begin, begin), hi = std::min(r.end, end);
    if (lo < hi) f += (hi - lo) * layer_forward_flops(c, tp, B, T, lo);
  }
  return f;
}

double layer_forward_flops(const ModelConfig& c, int tp, int64_t B, int64_t T, int layer) {
  const Architecture& a = architecture(c.family);
  const double N = static_cast<double>(B * T);
  const double matmul = static_cast<double>(decl_numel(a.layer_params(c, layer), c, true));
  const double attention_width = static_cast<double>(c.n_head) * c.head_size();
  // Each matmul parameter is a multiply-add per token; QK^T and AV are 2 T H each per token
  // (counted non-causal, as the MFU formula does); all split over tp.
  return (2.0 * N * matmul + 4.0 * static_cast<double>(B) * T * T * attention_width) / tp;
}

double head_forward_flops(const ModelConfig& c, int tp, int64_t B, int64_t T) {
  const double N = static_cast<double>(B * T);
  return 2.0 * N * c.n_embd * static_cast<double>(c.vocab_size) / tp;
}

namespace {
// config.json's key for ModelConfig::tokenizer, the same for every family (not a Hugging Face key;
// its loaders keep unknown keys as attributes).
constexpr const char* kTokenizerKey = "trident_tokenizer";
}  // namespace

nlohmann::json model_config_to_hf_json(const ModelConfig& c) {
  nlohmann::json j = architecture(c.family).to_hf_json(c);
  if (!c.tokenizer.empty()) j[kTokenizerKey] = c.tokenizer;
  return j;
}

ModelConfig model_config_from_hf_json(const nlohmann::json& j, const std::string& source) {
  TRI_CHECK(j.is_object(), "{} is not a JSON object", source);
  const Architecture* found = nullptr;
  if (j.contains("model_type")) {
    TRI_CHECK(j["model_type"].is_string(), "{}: model_type must be a string such as \"gpt2\" or \"llama\", got {}",
              source, j["model_type"].dump());
    found = &architecture_for_model_type(j["model_type"].get<std::string>(), source);
  } else {
    // Hand-written configs may omit model_type: the family whose keys it holds, if exactly one.
    // Families share keys (Mixtral holds Llama's): take the one explaining most of the keys
    // held, and among equals the one declaring fewest (a Llama file is not a Mixtral one).
    std::vector<const Architecture*> matching;
    std::size_t best_held = 1, best_declared = 0;
    for (const Architecture* a : all_architectures()) {
      const std::vector<std::string> keys = a->hf_keys();
      const auto held = static_cast<std::size_t>(
          std::count_if(keys.begin(), keys.end(), [&](const std::string& k) { return j.contains(k); }));
      if (held < best_held || (held == best_held && !matching.empty() && keys.size() > best_declared)) continue;
      if (held > best_held || keys.size() < best_declared) matching.clear();
      best_held = held, best_declared = keys.size();
      matching.push_back(a);
    }
    TRI_CHECK(matching.size() == 1,
              "{} has no model_type and its keys {}; add \"model_type\": \"gpt2\", \"llama\" or \"mixtral\"", source,
              matching.empty() ? "name no supported family" : "belong to more than one family");
    found = matching.front();
  }
  const Architecture& arch = *found;
  // Keys only another family uses contradict the model_type: say so rather than guess.
  const std::vector<std::string> own = arch.hf_keys();
  for (const Architecture* other : all_architectures()) {
    if (other == &arch) continue;
    for (const std::string& key : other->hf_keys()) {
      if (!j.contains(key) || std::find(own.begin(), own.end(), key) != own.end()) continue;
      TRI_FAIL("{} says model_type \"{}\" but holds \"{}\", a {} key: the file mixes two model "
               "families; fix model_type or remove the other family's keys",
               source, family_name(arch.family()), key, family_name(other->family()));
    }
  }
  ModelConfig c = arch.from_hf_json(j, source);
  if (j.contains(kTokenizerKey)) {
    TRI_CHECK(j[kTokenizerKey].is_string(), "{}: {} must be a string such as \"gpt2\", got {}", source,
              kTokenizerKey, j[kTokenizerKey].dump());
    c.tokenizer = j[kTokenizerKey].get<std::string>();
  }
  try {
    c.validate();
  } catch (const Error& e) {
    TRI_FAIL("invalid model config in {}: {}", source, e.what());
  }
  return c;
}

}  // namespace trident::nn
