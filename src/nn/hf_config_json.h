// Small helpers the architectures share for reading Hugging Face config.json values and names.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace trident::nn {

// j[key] as a 32-bit int; throws naming `source` and `key` (missing: with `needs`, what a
// config of this family must hold).
int hf_json_int(const nlohmann::json& j, const char* key, const std::string& source, const char* needs);
// j[key] as a number (missing: `fallback`).
double hf_json_number(const nlohmann::json& j, const char* key, const std::string& source, double fallback);
// j[key] as a bool (missing: `fallback`).
bool hf_json_bool(const nlohmann::json& j, const char* key, const std::string& source, bool fallback);
// "PREFIX12.rest" -> 12; anything else -1.
int hf_layer_index(const std::string& name, const std::string& prefix);

}  // namespace trident::nn
