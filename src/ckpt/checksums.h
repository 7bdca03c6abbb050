// Checksums of a step directory's tensor files, recorded in its trident.json under "checksums"
// ({"model.safetensors": "crc32c:1a2b3c4d", ...}; core/crc32c.h) when the checkpoint is written,
// and checked when it is loaded or verified: a bit flipped on disk or in a copy is otherwise a
// silently different model. Only the safetensors files are covered: config.json and the
// adapter config are parsed and checked against the tensors, and users edit them on purpose.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <span>
#include <string>

#include "ckpt/safetensors.h"

namespace trident::ckpt {

inline constexpr const char* kChecksumsKey = "checksums";
// The same record in config.json, for the directories `trident quantize`, `dequantize` and
// `merge-lora` write: they are not step directories (no trident.json, whose "step" `ckpt info`
// and --resume require), so their record sits beside trident_base_fingerprint.
inline constexpr const char* kOutputChecksumsKey = "trident_checksums";

// The checksums DIR records: `trident` (its trident.json, or null)'s "checksums", else its
// config.json's "trident_checksums"; null when neither (a Hugging Face directory, an older output).
nlohmann::json recorded_checksums(const std::string& dir, const nlohmann::json& trident);

// CRC-32C of the whole file at `path`, read in blocks (no mapping: resident memory stays flat).
std::uint32_t file_crc32c(const std::string& path);

// Throws, naming the file and both values, when a file recorded_checksums(dir, trident) lists is
// missing or no longer has its recorded CRC. Returns how many files were checked (0: the
// checkpoint records none, e.g. a Hugging Face directory).
// A file one of `read_by` has open is checked through it (SafetensorsReader::file_crc32c: what
// a load read with checksum_reads() on is not read again); the others with file_crc32c.
int verify_checksums(const std::string& dir, const nlohmann::json& trident,
                     std::span<const SafetensorsReader* const> read_by = {});

}  // namespace trident::ckpt
