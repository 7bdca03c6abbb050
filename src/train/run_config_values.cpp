// The non-template helpers of run_config_values.h.
#include "train/run_config_values.h"

#include <algorithm>

namespace trident::train::detail {

std::string kebab(std::string_view name) {
  std::string s(name);
  std::replace(s.begin(), s.end(), '_', '-');
  return s;
}

std::string join(std::span<const std::string_view> names, std::string_view sep) {
  return fmt::format("{}", fmt::join(names.begin(), names.end(), sep));
}

std::string bounds_text(const Bounds& b) {
  const bool has_min = std::isfinite(b.min), has_max = std::isfinite(b.max);
  const std::string lo = fmt::format("{} {}", b.min_exclusive ? ">" : ">=", b.min);
  const std::string hi = fmt::format("{} {}", b.max_exclusive ? "<" : "<=", b.max);
  if (has_min && has_max && !b.min_exclusive && !b.max_exclusive) {
    return fmt::format("must be between {} and {}", b.min, b.max);
  }
  if (has_min && has_max) return fmt::format("must be {} and {}", lo, hi);
  if (has_min) return "must be " + lo;
  if (has_max) return "must be " + hi;
  return "must be a finite number";
}

std::optional<bool> bool_from_text(std::string_view s) {
  if (s == "true" || s == "1" || s == "yes" || s == "on") return true;
  if (s == "false" || s == "0" || s == "no" || s == "off") return false;
  return std::nullopt;
}

std::string describe_toml(const toml::node& n) {
  if (auto s = n.value_exact<std::string>()) return fmt::format("the string '{}'", *s);
  if (auto i = n.value_exact<int64_t>()) return fmt::format("the integer {}", *i);
  if (auto d = n.value_exact<double>()) return fmt::format("the number {}", *d);
  if (auto b = n.value_exact<bool>()) return fmt::format("the boolean {}", *b ? "true" : "false");
  if (n.is_array()) return "an array";
  if (n.is_table()) return "a table";
  return "a date or time";
}

std::string describe_json(const json& j) {
  if (j.is_string()) return fmt::format("the string '{}'", j.get<std::string>());
  if (j.is_boolean()) return fmt::format("the boolean {}", j.dump());
  if (j.is_number_integer()) return fmt::format("the integer {}", j.dump());
  if (j.is_number()) return fmt::format("the number {}", j.dump());
  if (j.is_null()) return "null";
  if (j.is_array()) return "an array";
  return "an object";
}

}  // namespace trident::train::detail
