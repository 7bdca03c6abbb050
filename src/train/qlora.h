// QLoRA runs (quant/packed_base.h): `train --init-from QDIR --lora-rank r --lora-targets ...`
// where QDIR is a `trident quantize` output (int8 or q4), and `--resume` of such a run's step
// directory. That directory is itself a quantized checkpoint -- the base's model.safetensors
// and config.json copied byte for byte (never rewritten as fp32) -- plus the adapters
// (adapter_model.safetensors, adapter_config.json), optimizer.safetensors and trident.json
// (lora_base: QDIR), so it resumes without QDIR.
#pragma once

#include <string>

#include "ckpt/checkpoint.h"
#include "nn/model_config.h"
#include "parallel/engine.h"
#include "quant/quantized_model.h"

namespace trident::train {

// Whether PATH (a directory, or a root holding 'latest') is a quantized checkpoint.
bool is_quantized_source(const std::string& path);
// A quantized checkpoint's run files (trident.json, optimizer.safetensors, the LoRA settings of
// adapter_config.json) as a LoadedCheckpoint whose config is the base's; its model tensors are
// not validated here (quant::load_quantized does, packed).
ckpt::LoadedCheckpoint open_quantized_source(const std::string& path);
// The run's model: `c` (the base's shape and the LoRA settings) with the base packed as `q` is.
// Throws when `c` trains no adapters: a quantized base is trainable only as a frozen QLoRA base.
// (`trident plan --init-from QDIR` shapes its plan the same way, from quant::quantized_format.)
nn::ModelConfig with_packed_base(nn::ModelConfig c, quant::PackedFormat q, const std::string& source);
// Loads the base: packed matrices into the packed base, every other tensor as fp32.
void load_packed_base(parallel::Engine& engine, const quant::QuantizedModel& q);

}  // namespace trident::train
