// Reading a LoRA run's adapters (adapter_config.json and adapter_model.safetensors, PEFT's
// format: nn/lora_checkpoint.h) against the base they are to be applied to, with one clear
// error for each way they can fail to fit it. `trident merge-lora` folds them into the weights;
// `trident eval` / `generate` apply them unmerged (infer/lora_apply.h).
#pragma once

#include <string>
#include <vector>

#include "nn/lora.h"

namespace trident::ckpt {

// One adapted base weight: its declaration and the logical adapter, A [r, in], B [out, r].
struct LoadedAdapter {
  nn::ParamDecl base;
  std::vector<float> a, b;
};

struct LoadedAdapters {
  std::string dir;      // the resolved step directory
  nn::LoraConfig lora;      // r, lora_alpha, the family's short target names
  std::vector<LoadedAdapter> adapters;  // layer then target order
  // What the base check (ckpt/base_fingerprint.h) has to say: "" when the fingerprints agree.
  std::string base_note;
};

// Whether DIR (a step directory) holds either adapter file.
bool holds_adapters(const std::string& dir);
// Reads DIR's adapters (DIR: a step directory or a root holding 'latest') for a base shaped
// `base` (`base_name` names it in errors). Throws, naming the file and what to do, when: a file is
// missing; the config is not PEFT LoRA or names modules the family lacks; a rank the base's
// targets do not allow; a tensor that is no adapter of this base or has another shape (the
// adapter was trained on another model); a tensor missing; a non-finite value.
LoadedAdapters read_adapters(const nn::ModelConfig& base, const std::string& dir, const std::string& base_name);

}  // namespace trident::ckpt
