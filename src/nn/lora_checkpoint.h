// What a LoRA run's checkpoint holds besides the model (nn/lora.h): the adapters as PEFT saves
// them (adapter_model.safetensors, "base_model.model.<Hugging Face module>.lora_A.weight" /
// "lora_B.weight") and PEFT's adapter_config.json; the optimizer state is the adapters' only.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "nn/architecture.h"

namespace trident::nn {

// The adapters of every layer as logical tensors, Trident's names (the base module's name plus
// ".lora_A.weight" / ".lora_B.weight"), in layer then target order; empty without LoRA.
std::vector<TensorSpec> lora_tensor_specs(const ModelConfig& c);
// The tensors the optimizer trains: the adapters of a LoRA run, else every model tensor.
std::vector<TensorSpec> trained_tensor_specs(const ModelConfig& c);
// How many tensors trained_tensor_specs(c) lists, computed without listing them: a config.json
// claiming 1e9 layers is refused on this count before anything is built.
int64_t trained_tensor_count(const ModelConfig& c);
// PEFT's name of an adapter tensor: "base_model.model." + the Hugging Face model class's name
// (GPT2LMHeadModel's "transformer." prefix included).
std::string peft_tensor_name(const ModelConfig& c, const std::string& name);
// PEFT's adapter_config.json for this run's adapters on `base` (base_model_name_or_path).
nlohmann::json lora_adapter_config(const ModelConfig& c, const std::string& base);
// The LoRA settings an adapter_config.json (of a model shaped `c`) describes: its r, lora_alpha
// and target_modules as the family's short names. Throws, naming `source`, for a config that is
// not PEFT LoRA or names modules the family has no target for.
LoraConfig lora_config_from_adapter_json(const ModelConfig& c, const nlohmann::json& j, const std::string& source);

}  // namespace trident::nn
