// What a LoRA run asks for (Hu et al. 2021, PEFT's LoraConfig): the rank r, lora_alpha and the
// target modules by the family's short names (nn/lora.h says which names each family has).
// Part of the model's shape (nn::ModelConfig::lora) because the adapters are parameters the
// layers build; rank 0 means no adapters and a fully trainable model.
#pragma once

#include <string>
#include <vector>

namespace trident::nn {

struct LoraConfig {
  int rank = 0;        // r; 0: off
  double alpha = 0.0;  // lora_alpha; the adapter's output is scaled by alpha / r
  std::vector<std::string> targets;  // short names, in the order given

  bool enabled() const { return rank > 0; }
  float scale() const { return enabled() ? static_cast<float>(alpha / rank) : 0.0f; }
};

}  // namespace trident::nn
