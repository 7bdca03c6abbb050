// Which base a LoRA adapter belongs to (docs/lora.md "Which base"): a fingerprint of the base's
// fp32 origin, of one of two kinds. Family and shapes alone let an adapter of one base load onto
// another base of the same shape (another seed, another run's step); the fingerprint tells them
// apart. It is not a security hash.
//   - "files:" and 16 hex digits, for a directory that records its weight files' CRC-32Cs
//     (ckpt/checksums.h: a training step directory, a dequantize or merge-lora output): a 64-bit
//     FNV-1a hash of each model file's name and recorded checksum. No tensor is read. The CRC covers
//     every byte of model.safetensors, its header (each tensor's name, dtype, shape, offsets) and
//     its data, and every load verifies it, so equal records mean the same file bytes (a CRC-32C
//     detects every change confined to 32 consecutive bits, e.g. one weight; files differing more
//     widely collide with probability about 2^-32);
//   - 16 hex digits, for a directory without such a record (a Hugging Face directory): the 64-bit
//     FNV-1a hash over every model tensor the family declares (in declaration order: its Hugging
//     Face name, its shape, its fp32 bits), one full read.
// An adapter and a base of different kinds (an adapter recorded before "files:" fingerprints, or
// one base saved by another tool) are compared by tensor hash, read from an fp32 copy of the base
// (check_adapter_base).
//
// What a checkpoint's fingerprint is:
//   - config.json's "trident_base_fingerprint" when it records one: `trident quantize` writes its
//     fp32 input's there, `trident dequantize` passes it on, and a QLoRA step directory copies the
//     quantized config.json byte for byte. So the q4, int8 (RTN or GPTQ) and dequantized versions
//     of one fp32 base are the same base: an adapter trained on any of them applies to all;
//   - a LoRA step directory (its model.safetensors is the base, bitwise as loaded): the fingerprint
//     its run recorded in trident.json "lora_base_fingerprint";
//   - a quantized checkpoint written before fingerprints existed: unknown ("");
//   - otherwise (a training checkpoint, a Hugging Face directory, a merge-lora output) its own: from
//     its recorded checksums where it has them, else the hash of its tensors.
// A LoRA run records its base's in every step directory's trident.json ("lora_base_fingerprint",
// beside "lora_base"), carried over by --resume.
#pragma once

#include <string>

#include "ckpt/checkpoint.h"

namespace trident::ckpt {

inline constexpr const char* kBaseFingerprintKey = "trident_base_fingerprint";  // config.json
inline constexpr const char* kLoraBaseFingerprintKey = "lora_base_fingerprint";  // trident.json
inline constexpr const char* kFilesFingerprintPrefix = "files:";  // derived from recorded checksums

// The hash of a loaded checkpoint's model tensors (read as fp32).
std::string tensor_fingerprint(const LoadedCheckpoint& loaded);
// The fingerprint of the checkpoint at PATH (a directory or a root holding 'latest'), as above;
// "" when unknown.
std::string base_fingerprint(const std::string& path);
// The same for an already loaded checkpoint (what `train --init-from` has in hand).
std::string base_fingerprint(const LoadedCheckpoint& loaded);

// Before adapters are applied to or merged into a base: throws one error, naming both
// checkpoints and both fingerprints, when the run that wrote `adapter_dir` (a step directory)
// recorded another base than `base_path`'s (of different kinds: their tensor hashes, above) (`base_flag` names the option that gave it, "--ckpt"
// or "--base"), unless `allow_other_base` (--allow-other-base). Returns a note for stderr when
// nothing could be checked (a side without a fingerprint) or a mismatch was allowed; "" when the
// fingerprints agree.
std::string check_adapter_base(const std::string& adapter_dir, const std::string& base_path,
                               const std::string& base_flag, bool allow_other_base);

}  // namespace trident::ckpt
