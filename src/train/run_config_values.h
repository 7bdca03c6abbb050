// Per-type behaviour of a run-config field, written once: how an int, a number, a bool, a
// string or an enum is read (command line, TOML, JSON), shown (--help, errors, the TOML dump),
// range-checked and stored. Internal to train/run_config*.cpp.
#pragma once

#include <fmt/format.h>

#include <charconv>
#include <cmath>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <toml++/toml.h>
#include <type_traits>

#include "core/check.h"
#include "train/run_config.h"

namespace trident::train::detail {

using json = nlohmann::json;

std::string kebab(std::string_view name);
std::string join(std::span<const std::string_view> names, std::string_view sep);
std::string bounds_text(const Bounds& b);
std::optional<bool> bool_from_text(std::string_view s);
std::string describe_toml(const toml::node& n);
std::string describe_json(const json& j);


template <class T>
inline constexpr bool kIsOptional = false;
template <class T>
inline constexpr bool kIsOptional<std::optional<T>> = true;

template <class T>
inline constexpr bool kIsNumber =
    std::is_same_v<T, int> || std::is_same_v<T, int64_t> || std::is_same_v<T, double>;

template <class E>
std::string choices(E e) {
  return join(enum_names(e), ", ");
}

// "an integer", "a number", ...: what a field accepts, for type errors.
template <class T>
std::string expected_text() {
  if constexpr (std::is_same_v<T, int> || std::is_same_v<T, std::optional<int>>) return "an integer";
  else if constexpr (std::is_same_v<T, int64_t>) return "an integer";
  else if constexpr (std::is_same_v<T, double> || std::is_same_v<T, std::optional<double>>)
    return "a number";
  else if constexpr (std::is_same_v<T, bool>) return "true or false";
  else if constexpr (std::is_same_v<T, std::string>) return "a string";
  else if constexpr (std::is_enum_v<T>) return "one of " + choices(T{});
}

// A value as --help, error messages and the TOML dump show it (strings unquoted here).
template <class T>
std::string value_text(const T& v) {
  if constexpr (kIsOptional<T>) return v ? value_text(*v) : std::string("unset");
  else if constexpr (std::is_same_v<T, bool>) return v ? "true" : "false";
  else if constexpr (std::is_same_v<T, std::string>) return v;
  else if constexpr (std::is_enum_v<T>) return std::string(enum_name(v));
  else return fmt::format("{}", v);
}

// The same value as a TOML literal.
template <class T>
std::string toml_literal(const T& v) {
  if constexpr (std::is_same_v<T, std::string>) return json(v).dump();  // JSON escapes are TOML's
  else if constexpr (std::is_enum_v<T>) return json(std::string(enum_name(v))).dump();
  else if constexpr (std::is_same_v<T, double>) {
    std::string s = fmt::format("{}", v);
    if (s.find_first_of(".e") == std::string::npos) s += ".0";  // keep it a TOML float
    return s;
  } else return value_text(v);
}

// Empty when x is accepted, else what is wrong ("must be >= 1").
template <class T>
std::string range_problem(const Field<T>& f, const T& value) {
  if constexpr (kIsOptional<T>) {
    if (!value) return {};
  }
  if constexpr (kIsNumber<T> || kIsOptional<T>) {
    double x;
    if constexpr (kIsOptional<T>) x = static_cast<double>(*value);
    else x = static_cast<double>(value);
    const Bounds& b = f.bounds;
    const bool ok = std::isfinite(x) && (b.min_exclusive ? x > b.min : x >= b.min) &&
                    (b.max_exclusive ? x < b.max : x <= b.max);
    if (!ok) return bounds_text(b);
  }
  return {};
}

// Checks the range, then stores. `where` names the option and its source ("--lr",
// "'lr' in run.toml [optim] (line 3)").
template <class T>
void assign(const Field<T>& f, T& dst, T value, const std::string& where) {
  const std::string problem = range_problem(f, value);
  if (!problem.empty()) {
    TRI_FAIL("{} = {} is out of range: {} ({})", where, value_text(value), problem, f.help);
  }
  dst = std::move(value);
}

template <class E>
E enum_from_text(E, std::string_view text, const std::string& where) {
  const auto names = enum_names(E{});
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i] == text) return static_cast<E>(i);
  }
  TRI_FAIL("{}: unknown value '{}'; accepted values: {}", where, text, choices(E{}));
}

// A command-line value.
template <class T>
T value_from_text(const Field<T>& f, std::string_view text, const std::string& where) {
  auto bad = [&]() -> T {
    TRI_FAIL("{}: expected {}, got '{}'", where, expected_text<T>(), text);
  };
  if constexpr (std::is_same_v<T, std::optional<int>>) {  // an override: set means given
    return value_from_text(Field<int>{f.name, 0, f.help, f.bounds}, text, where);
  } else if constexpr (std::is_same_v<T, int> || std::is_same_v<T, int64_t>) {
    T v{};
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (ec == std::errc::result_out_of_range) {
      TRI_FAIL("{}: {} does not fit ({})", where, text, bounds_text(f.bounds));
    }
    if (ec != std::errc() || end != text.data() + text.size()) return bad();
    return v;
  } else if constexpr (std::is_same_v<T, double> || std::is_same_v<T, std::optional<double>>) {
    double v = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (ec != std::errc() || end != text.data() + text.size()) return bad();
    return v;
  } else if constexpr (std::is_same_v<T, bool>) {
    const auto b = bool_from_text(text);
    if (!b) return bad();
    return *b;
  } else if constexpr (std::is_same_v<T, std::string>) {
    return std::string(text);
  } else if constexpr (std::is_enum_v<T>) {
    return enum_from_text(T{}, text, where);
  }
}

// A TOML value. Integers are accepted where numbers are expected, never the other way round.
template <class T>
T value_from_toml(const Field<T>& f, const toml::node& n, const std::string& where) {
  auto bad = [&]() -> T {
    TRI_FAIL("{}: expected {}, got {}", where, expected_text<T>(), describe_toml(n));
  };
  if constexpr (std::is_same_v<T, std::optional<int>>) {
    return value_from_toml(Field<int>{f.name, 0, f.help, f.bounds}, n, where);
  } else if constexpr (std::is_same_v<T, int> || std::is_same_v<T, int64_t>) {
    const auto i = n.value_exact<int64_t>();
    if (!i) return bad();
    if (*i < static_cast<int64_t>(std::numeric_limits<T>::min()) ||
        (std::is_same_v<T, int> && *i > std::numeric_limits<int>::max())) {
      TRI_FAIL("{} = {} is out of range: {} ({})", where, *i, bounds_text(f.bounds), f.help);
    }
    return static_cast<T>(*i);
  } else if constexpr (std::is_same_v<T, double> || std::is_same_v<T, std::optional<double>>) {
    if (auto i = n.value_exact<int64_t>()) return static_cast<double>(*i);
    if (auto d = n.value_exact<double>()) return *d;
    return bad();
  } else if constexpr (std::is_same_v<T, bool>) {
    if (auto b = n.value_exact<bool>()) return *b;
    return bad();
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (auto s = n.value_exact<std::string>()) return *s;
    return bad();
  } else if constexpr (std::is_enum_v<T>) {
    if (auto s = n.value_exact<std::string>()) return enum_from_text(T{}, *s, where);
    return bad();
  }
}

template <class T>
json value_to_json(const T& v) {
  if constexpr (kIsOptional<T>) return v ? json(*v) : json(nullptr);
  else if constexpr (std::is_enum_v<T>) return json(std::string(enum_name(v)));
  else return json(v);
}

template <class T>
T value_from_json(const Field<T>& f, const json& j, const std::string& where) {
  auto bad = [&]() -> T {
    TRI_FAIL("{}: expected {}, got {}", where, expected_text<T>(), describe_json(j));
  };
  if constexpr (std::is_same_v<T, std::optional<int>>) {
    if (j.is_null()) return std::nullopt;
    return value_from_json(Field<int>{f.name, 0, f.help, f.bounds}, j, where);
  } else if constexpr (std::is_same_v<T, int> || std::is_same_v<T, int64_t>) {
    if (!j.is_number_integer()) return bad();
    if (j.is_number_unsigned()) {
      const uint64_t u = j.get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<T>::max())) {
        TRI_FAIL("{} = {} is out of range: {}", where, u, bounds_text(f.bounds));
      }
      return static_cast<T>(u);
    }
    const int64_t i = j.get<int64_t>();
    if (i < static_cast<int64_t>(std::numeric_limits<T>::min()) ||
        (std::is_same_v<T, int> && i > std::numeric_limits<int>::max())) {
      TRI_FAIL("{} = {} is out of range: {}", where, i, bounds_text(f.bounds));
    }
    return static_cast<T>(i);
  } else if constexpr (std::is_same_v<T, std::optional<double>>) {
    if (j.is_null()) return std::nullopt;
    if (!j.is_number()) return bad();
    return j.get<double>();
  } else if constexpr (std::is_same_v<T, double>) {
    if (!j.is_number()) return bad();
    return j.get<double>();
  } else if constexpr (std::is_same_v<T, bool>) {
    if (!j.is_boolean()) return bad();
    return j.get<bool>();
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (!j.is_string()) return bad();
    return j.get<std::string>();
  } else if constexpr (std::is_enum_v<T>) {
    if (!j.is_string()) return bad();
    return enum_from_text(T{}, j.get<std::string>(), where);
  }
}

}  // namespace trident::train::detail
