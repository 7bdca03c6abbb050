// LoRA checkpoint tensors and PEFT's adapter config (see lora_checkpoint.h).
#include "nn/lora_checkpoint.h"

#include <algorithm>

#include "core/check.h"
#include "nn/lora.h"

namespace trident::nn {

std::vector<TensorSpec> lora_tensor_specs(const ModelConfig& c) {
  std::vector<TensorSpec> out;
  for (int l = 0; l < c.n_layer; ++l) {
    for (const LoraTarget& t : selected_lora_targets(c, l)) {
      const LoraDecls d = lora_decls(t.base, c.lora.rank);
      out.push_back({d.a.name, d.a.shape});
      out.push_back({d.b.name, d.b.shape});
    }
  }
  return out;
}

std::vector<TensorSpec> trained_tensor_specs(const ModelConfig& c) {
  return c.lora.enabled() ? lora_tensor_specs(c) : model_tensor_specs(c);
}

int64_t trained_tensor_count(const ModelConfig& c) {
  if (!c.lora.enabled()) return model_tensor_count(c);
  // Every layer has the same targets (layer 0's), two tensors (A, B) each.
  return 2 * static_cast<int64_t>(selected_lora_targets(c, 0).size()) * c.n_layer;
}

std::string peft_tensor_name(const ModelConfig& c, const std::string& name) {
  return "base_model.model." + std::string(architecture(c.family).hf_alternative_prefix()) + name;
}

nlohmann::json lora_adapter_config(const ModelConfig& c, const std::string& base) {
  nlohmann::json targets = nlohmann::json::array();
  bool conv1d = false;
  for (const LoraTarget& t : selected_lora_targets(c, 0)) {
    targets.push_back(t.peft_name);
    conv1d = conv1d || t.base.in_out;
  }
  // PEFT's LoraConfig fields; fan_in_fan_out says the base stores [in, out] (GPT-2's Conv1D).
  return {{"peft_type", "LORA"},
          {"task_type", "CAUSAL_LM"},
          {"r", c.lora.rank},
          {"lora_alpha", c.lora.alpha},
          {"target_modules", targets},
          {"lora_dropout", 0.0},
          {"bias", "none"},
          {"fan_in_fan_out", conv1d},
          {"use_rslora", false},
          {"init_lora_weights", true},
          {"base_model_name_or_path", base},
          {"inference_mode", false}};
}

LoraConfig lora_config_from_adapter_json(const ModelConfig& c, const nlohmann::json& j, const std::string& source) {
  TRI_CHECK(j.is_object() && j.value("peft_type", "") == "LORA", "{} is not a PEFT LoRA adapter config (peft_type {})",
            source, j.is_object() && j.contains("peft_type") ? j["peft_type"].dump() : "missing");
  TRI_CHECK(j.contains("r") && j["r"].is_number_integer() && j.contains("lora_alpha") && j["lora_alpha"].is_number() &&
                j.contains("target_modules") && j["target_modules"].is_array(),
            "{} needs r (an integer), lora_alpha and target_modules (a list)", source);
  TRI_CHECK(!j.value("use_rslora", false), "{}: use_rslora (scale alpha / sqrt(r)) is not supported", source);
  LoraConfig l{.rank = j["r"].get<int>(), .alpha = j["lora_alpha"].get<double>(), .targets = {}};
  const std::vector<LoraTarget> known = architecture(c.family).lora_targets(c, 0);
  for (const auto& m : j["target_modules"]) {
    const std::string name = m.is_string() ? m.get<std::string>() : m.dump();
    const auto it = std::find_if(known.begin(), known.end(), [&](const LoraTarget& t) { return t.peft_name == name; });
    TRI_CHECK(it != known.end(), "{}: target module {} is not a {} LoRA target", source, name, family_name(c.family));
    l.targets.push_back(it->short_name);
  }
  return l;
}

}  // namespace trident::nn
