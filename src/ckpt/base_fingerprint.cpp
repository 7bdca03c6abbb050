// A base model's fingerprint (see base_fingerprint.h).
#include "ckpt/base_fingerprint.h"

#include <fmt/format.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <vector>

#include "ckpt/checksums.h"
#include "core/check.h"
#include "nn/architecture.h"
#include "quant/quantized_model.h"

namespace trident::ckpt {

namespace {

namespace fs = std::filesystem;

constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ull, kFnvPrime = 0x100000001b3ull;

void mix(uint64_t& h, uint64_t word) {
  h ^= word;
  h *= kFnvPrime;
}

nlohmann::json read_json_or_null(const std::string& path) {
  std::ifstream in(path);
  if (!in) return nullptr;
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception&) {
    return nullptr;  // the loaders name a damaged file; here it only records nothing
  }
}

std::string string_at(const nlohmann::json& j, const char* key) {
  return j.is_object() && j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : std::string();
}

// TRIDENT_TRACE_FINGERPRINT=1: one stderr line per fingerprint saying where it came from (what
// cli.lora_base_test reads to see that a checkpoint with recorded checksums is not read again).
void trace(const std::string& dir, const std::string& how) {
  const char* v = std::getenv("TRIDENT_TRACE_FINGERPRINT");
  if (v != nullptr && std::string(v) == "1") fmt::print(stderr, "fingerprint: {}: {}\n", dir, how);
}

// The model weight files a checksum record covers (a Trident checkpoint has one, model.safetensors).
bool is_model_file(const std::string& name) {
  return name.rfind("model", 0) == 0 && name.size() > 12 && name.compare(name.size() - 12, 12, ".safetensors") == 0;
}

// The fingerprint of the model files' recorded CRC-32Cs: "files:" and the FNV-1a hash of each
// model file's name and recorded checksum (in name order); "" when the record has none.
std::string files_fingerprint(const nlohmann::json& sums) {
  if (!sums.is_object()) return {};
  uint64_t h = kFnvOffset;
  int files = 0;
  for (const auto& [name, crc] : sums.items()) {  // nlohmann's object: sorted by name
    if (!is_model_file(name) || !crc.is_string()) continue;
    for (unsigned char c : name + '\0' + crc.get<std::string>() + '\0') mix(h, c);
    ++files;
  }
  return files > 0 ? fmt::format("{}{:016x}", kFilesFingerprintPrefix, h) : std::string();
}

// What config.json and trident.json record, without reading tensors; nullopt when the tensors decide.
std::optional<std::string> recorded(const std::string& dir, const nlohmann::json& trident) {
  const nlohmann::json config = read_json_or_null(dir + "/" + kConfigFile);
  if (const std::string fp = string_at(config, kBaseFingerprintKey); !fp.empty()) {
    trace(dir, "recorded in config.json");
    return fp;
  }
  const bool lora_step = fs::is_regular_file(dir + "/" + kAdapterFile);
  if (lora_step) {
    if (const std::string fp = string_at(trident, kLoraBaseFingerprintKey); !fp.empty()) {
      trace(dir, "recorded in trident.json (the base its LoRA run was given)");
      return fp;
    }
  }
  if (config.is_object() && config.contains(quant::kQuantizationKey)) return std::string();  // unknown
  // An older LoRA step directory: its base's values are its own (bitwise), its file bytes not
  // necessarily the base's, so the tensors decide.
  if (lora_step) return std::nullopt;
  // The weight files' recorded checksums (ckpt/checksums.h), which every load verifies: the bytes
  // they stand for without reading them a second time.
  if (const std::string fp = files_fingerprint(recorded_checksums(dir, trident)); !fp.empty()) {
    trace(dir, "from the recorded checksums of its model files (no tensor read)");
    return fp;
  }
  return std::nullopt;
}

bool is_files_kind(const std::string& fp) { return fp.rfind(kFilesFingerprintPrefix, 0) == 0; }

// The tensor hash of an fp32 checkpoint at PATH (one full read); nullopt for a quantized one,
// whose tensors are not its fp32 origin's.
std::optional<std::string> fp32_tensor_hash(const std::string& path) {
  const std::string dir = resolve_checkpoint(path);
  if (quant::is_quantized_checkpoint(dir)) return std::nullopt;
  return tensor_fingerprint(load_checkpoint(dir));
}

}  // namespace

std::string tensor_fingerprint(const LoadedCheckpoint& loaded) {
  trace(loaded.path, "hashed its tensors (a full read)");
  uint64_t h = kFnvOffset;
  std::vector<float> values;
  for (const TensorSpec& spec : nn::model_tensor_specs(loaded.config)) {
    for (unsigned char c : spec.name) mix(h, c);
    for (int64_t d : spec.shape) mix(h, static_cast<uint64_t>(d));
    values.resize(static_cast<std::size_t>(shape_numel(spec.shape)));
    loaded.read_param(spec.name, spec.shape, values.data());
    for (float v : values) {
      uint32_t bits;
      std::memcpy(&bits, &v, sizeof bits);
      mix(h, bits);
    }
  }
  return fmt::format("{:016x}", h);
}

std::string base_fingerprint(const LoadedCheckpoint& loaded) {
  if (const std::optional<std::string> fp = recorded(loaded.path, loaded.trident)) return *fp;
  return tensor_fingerprint(loaded);
}

std::string base_fingerprint(const std::string& path) {
  const std::string dir = resolve_checkpoint(path);
  if (const std::optional<std::string> fp = recorded(dir, read_json_or_null(dir + "/" + kTridentFile))) return *fp;
  return tensor_fingerprint(load_checkpoint(dir));
}

std::string check_adapter_base(const std::string& adapter_path, const std::string& base_path,
                               const std::string& base_flag, bool allow_other_base) {
  const std::string adapter_dir = resolve_checkpoint(adapter_path);
  const nlohmann::json trident = read_json_or_null(adapter_dir + "/" + kTridentFile);
  std::string want = string_at(trident, kLoraBaseFingerprintKey);
  const std::string trained_on = string_at(trident, "lora_base");
  if (want.empty()) {
    return fmt::format("note: {} records no base fingerprint (written before fingerprints were recorded): that its "
                       "base is {} {} is not checked", adapter_dir, base_flag, base_path);
  }
  std::string have = base_fingerprint(base_path);
  if (have.empty()) {
    return fmt::format("note: {} {} records no base fingerprint (a quantized checkpoint written before fingerprints "
                       "were recorded): that it is the base of {} is not checked", base_flag, base_path, adapter_dir);
  }
  if (is_files_kind(want) != is_files_kind(have)) {
    // One side is a tensor hash (an adapter recorded before checksum fingerprints, or a base with no
    // checksums: a Hugging Face directory): compare tensor hashes, read from an fp32 copy of the base
    // (for an older adapter, the base given; otherwise the adapter's own step directory, whose
    // model.safetensors is its base bitwise as loaded).
    const std::optional<std::string> hash = fp32_tensor_hash(is_files_kind(want) ? adapter_dir : base_path);
    if (!hash) {
      return fmt::format("note: {} records its base as {} and {} {} is {}, and no fp32 copy is at hand to compare "
                         "tensor hashes: that it is the base of {} is not checked", adapter_dir, want, base_flag,
                         base_path, have, adapter_dir);
    }
    (is_files_kind(want) ? want : have) = *hash;
  }
  if (have == want) return {};
  TRI_CHECK(allow_other_base,
            "the adapters of {} were trained on base {} (fingerprint {}) but {} {} is another model (fingerprint {}): "
            "give the base they were trained on (its `trident quantize` and `trident dequantize` outputs have the "
            "same fingerprint), or pass --allow-other-base to apply them to this one anyway",
            adapter_dir, trained_on.empty() ? std::string("(unnamed)") : trained_on, want, base_flag, base_path, have);
  return fmt::format("note: --allow-other-base: the adapters of {} were trained on base {} (fingerprint {}), applied "
                     "to {} {} (fingerprint {})", adapter_dir, trained_on, want, base_flag, base_path, have);
}

}  // namespace trident::ckpt
