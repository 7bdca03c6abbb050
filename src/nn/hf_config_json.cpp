// Hugging Face config.json value helpers.
#include "nn/hf_config_json.h"

#include "core/check.h"

namespace trident::nn {

int hf_json_int(const nlohmann::json& j, const char* key, const std::string& source, const char* needs) {
  TRI_CHECK(j.contains(key), "{} has no \"{}\"; {}", source, key, needs);
  const auto& v = j[key];
  TRI_CHECK(v.is_number_integer(), "\"{}\" in {} must be an integer, got {}", key, source, v.dump());
  const auto x = v.get<std::int64_t>();
  TRI_CHECK(x >= -(1LL << 31) && x < (1LL << 31), "\"{}\" in {} is out of range: {}", key, source, x);
  return static_cast<int>(x);
}

double hf_json_number(const nlohmann::json& j, const char* key, const std::string& source, double fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  TRI_CHECK(j[key].is_number(), "\"{}\" in {} must be a number, got {}", key, source, j[key].dump());
  return j[key].get<double>();
}

bool hf_json_bool(const nlohmann::json& j, const char* key, const std::string& source, bool fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  TRI_CHECK(j[key].is_boolean(), "\"{}\" in {} must be true or false, got {}", key, source, j[key].dump());
  return j[key].get<bool>();
}

int hf_layer_index(const std::string& name, const std::string& prefix) {
  if (!name.starts_with(prefix)) return -1;
  std::size_t i = prefix.size();
  int v = 0;
  const std::size_t begin = i;
  while (i < name.size() && name[i] >= '0' && name[i] <= '9' && i - begin < 9) v = v * 10 + (name[i++] - '0');
  if (i == begin || i >= name.size() || name[i] != '.') return -1;
  return v;
}

}  // namespace trident::nn
