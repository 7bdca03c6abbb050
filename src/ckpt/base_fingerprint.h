// Which base a LoRA adapter belongs to (docs/lora.md "Which base"): a fingerprint of the base's
// fp32 origin, 16 hex digits of a 64-bit FNV-1a hash over every model tensor the family declares
// (in declaration order: its Hugging Face name, its shape, its fp32 bits). Family and shapes
// alone let an adapter of one base load onto another base of the same shape (another seed,
// another run's step); the fingerprint tells them apart. It is not a security hash.
//
// What a checkpoint's fingerprint is:
//   - config.json's "trident_base_fingerprint" when it records one: `trident quantize` writes its
//     fp32 input's there, `trident dequantize` passes it on, and a QLoRA step directory copies the
//     quantized config.json byte for byte. So the q4, int8 (RTN or GPTQ) and dequantized versions
//     of one fp32 base are the same base: an adapter trained on any of them applies to all;
//   - a LoRA step directory (its model.safetensors is the base, bitwise as loaded): the fingerprint
//     its run recorded in trident.json "lora_base_fingerprint";
//   - a quantized checkpoint written before fingerprints existed: unknown ("");
//   - otherwise (a training checkpoint, a Hugging Face directory, a merge-lora output) the hash of
//     its own tensors.
// A LoRA run records its base's in every step directory's trident.json ("lora_base_fingerprint",
// beside "lora_base"), carried over by --resume.
#pragma once

#include <string>

#include "ckpt/checkpoint.h"

namespace trident::ckpt {

inline constexpr const char* kBaseFingerprintKey = "trident_base_fingerprint";  // config.json
inline constexpr const char* kLoraBaseFingerprintKey = "lora_base_fingerprint";  // trident.json

// The hash of a loaded checkpoint's model tensors (read as fp32).
std::string tensor_fingerprint(const LoadedCheckpoint& loaded);
// The fingerprint of the checkpoint at PATH (a directory or a root holding 'latest'), as above;
// "" when unknown.
std::string base_fingerprint(const std::string& path);
// The same for an already loaded checkpoint (what `train --init-from` has in hand).
std::string base_fingerprint(const LoadedCheckpoint& loaded);

// Before adapters are applied to or merged into a base: throws one error, naming both
// checkpoints and both fingerprints, when the run that wrote `adapter_dir` (a step directory)
// recorded another base than `base_path`'s (`base_flag` names the option that gave it, "--ckpt"
// or "--base"), unless `allow_other_base` (--allow-other-base). Returns a note for stderr when
// nothing could be checked (a side without a fingerprint) or a mismatch was allowed; "" when the
// fingerprints agree.
std::string check_adapter_base(const std::string& adapter_dir, const std::string& base_path,
                               const std::string& base_flag, bool allow_other_base);

}  // namespace trident::ckpt
