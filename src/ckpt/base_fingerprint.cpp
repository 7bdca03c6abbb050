// A base model's fingerprint (see base_fingerprint.h).
#include "ckpt/base_fingerprint.h"

#include <fmt/format.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <vector>

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

// What config.json and trident.json record, without reading tensors; nullopt when the tensors decide.
std::optional<std::string> recorded(const std::string& dir, const nlohmann::json& trident) {
  const nlohmann::json config = read_json_or_null(dir + "/" + kConfigFile);
  if (const std::string fp = string_at(config, kBaseFingerprintKey); !fp.empty()) return fp;
  if (fs::is_regular_file(dir + "/" + kAdapterFile)) {
    if (const std::string fp = string_at(trident, kLoraBaseFingerprintKey); !fp.empty()) return fp;
  }
  if (config.is_object() && config.contains(quant::kQuantizationKey)) return std::string();  // unknown
  return std::nullopt;
}

}  // namespace

std::string tensor_fingerprint(const LoadedCheckpoint& loaded) {
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
  const std::string want = string_at(trident, kLoraBaseFingerprintKey);
  const std::string trained_on = string_at(trident, "lora_base");
  if (want.empty()) {
    return fmt::format("note: {} records no base fingerprint (written before fingerprints were recorded): that its "
                       "base is {} {} is not checked", adapter_dir, base_flag, base_path);
  }
  const std::string have = base_fingerprint(base_path);
  if (have.empty()) {
    return fmt::format("note: {} {} records no base fingerprint (a quantized checkpoint written before fingerprints "
                       "were recorded): that it is the base of {} is not checked", base_flag, base_path, adapter_dir);
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
