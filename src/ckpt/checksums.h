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

// CRC-32C of the whole file at `path`, read in blocks (no mapping: resident memory stays flat).
std::uint32_t file_crc32c(const std::string& path);

// Throws, naming the file and both values, when a file `trident` (the step's trident.json, or
// null) lists under "checksums" is missing or no longer has its recorded CRC. Returns how many
// files were checked (0: the checkpoint records none, e.g. a Hugging Face directory).
// A file one of `read_by` has open is checked through it (SafetensorsReader::file_crc32c: what
// a load read with checksum_reads() on is not read again); the others with file_crc32c.
int verify_checksums(const std::string& dir, const nlohmann::json& trident,
                     std::span<const SafetensorsReader* const> read_by = {});

}  // namespace trident::ckpt
