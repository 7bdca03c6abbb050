// Everything the field lists of run_config.h drive: defaults, command-line and TOML parsing,
// --help, the TOML dump, JSON, the hash, and the checks between fields. Per-type behaviour
// (how an int, a number, a path or an enum is parsed, printed and checked) lives here once.
#include "train/run_config.h"

#include "ckpt/checkpoint.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <toml++/toml.h>
#include <vector>

#include "core/check.h"
#include "core/rng.h"
#include "train/preemption.h"

namespace trident::train {

using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------
// Enums.

namespace {
constexpr std::string_view kDataOrderNames[] = {"random", "sequential"};
constexpr std::string_view kLrScheduleNames[] = {"cosine", "constant"};
constexpr std::string_view kScheduleNames[] = {"gpipe", "1f1b", "interleaved"};
constexpr std::string_view kNonfiniteNames[] = {"skip", "stop"};
constexpr std::string_view kOffloadNames[] = {"none", "optimizer"};
}  // namespace

std::span<const std::string_view> enum_names(DataOrder) { return kDataOrderNames; }
std::span<const std::string_view> enum_names(LrSchedule) { return kLrScheduleNames; }
std::span<const std::string_view> enum_names(PipelineSchedule) { return kScheduleNames; }
std::span<const std::string_view> enum_names(NonfinitePolicy) { return kNonfiniteNames; }
std::span<const std::string_view> enum_names(Offload) { return kOffloadNames; }
std::span<const std::string_view> enum_names(nn::Recompute) { return nn::recompute_names(); }
std::span<const std::string_view> enum_names(kernels::Precision) { return kernels::precision_names(); }

// ---------------------------------------------------------------------------------------------
// Defaults: each struct's constructor applies the defaults of its field list.

namespace {
struct SetDefault {
  template <class T>
  void operator()(const Field<T>& f, T& x) const { x = f.default_value; }
};
}  // namespace

ModelOptions::ModelOptions() { for_each_field(*this, SetDefault{}); }
DataOptions::DataOptions() { for_each_field(*this, SetDefault{}); }
OptimOptions::OptimOptions() { for_each_field(*this, SetDefault{}); }
ParallelOptions::ParallelOptions() { for_each_field(*this, SetDefault{}); }
TrainOptions::TrainOptions() { for_each_field(*this, SetDefault{}); }

namespace {

// ---------------------------------------------------------------------------------------------
// Per-type behaviour.

template <class T>
inline constexpr bool kIsOptional = false;
template <class T>
inline constexpr bool kIsOptional<std::optional<T>> = true;

template <class T>
inline constexpr bool kIsNumber =
    std::is_same_v<T, int> || std::is_same_v<T, int64_t> || std::is_same_v<T, double>;

std::string kebab(std::string_view name) {
  std::string s(name);
  std::replace(s.begin(), s.end(), '_', '-');
  return s;
}

std::string join(std::span<const std::string_view> names, std::string_view sep) {
  return fmt::format("{}", fmt::join(names.begin(), names.end(), sep));
}

template <class E>
std::string choices(E e) {
  return join(enum_names(e), ", ");
}

// "an integer", "a number", ...: what a field accepts, for type errors.
template <class T>
std::string expected_text() {
  if constexpr (std::is_same_v<T, int>) return "an integer";
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

std::optional<bool> bool_from_text(std::string_view s) {
  if (s == "true" || s == "1" || s == "yes" || s == "on") return true;
  if (s == "false" || s == "0" || s == "no" || s == "off") return false;
  return std::nullopt;
}

// A command-line value.
template <class T>
T value_from_text(const Field<T>& f, std::string_view text, const std::string& where) {
  auto bad = [&]() -> T {
    TRI_FAIL("{}: expected {}, got '{}'", where, expected_text<T>(), text);
  };
  if constexpr (std::is_same_v<T, int> || std::is_same_v<T, int64_t>) {
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

std::string describe_toml(const toml::node& n) {
  if (auto s = n.value_exact<std::string>()) return fmt::format("the string '{}'", *s);
  if (auto i = n.value_exact<int64_t>()) return fmt::format("the integer {}", *i);
  if (auto d = n.value_exact<double>()) return fmt::format("the number {}", *d);
  if (auto b = n.value_exact<bool>()) return fmt::format("the boolean {}", *b ? "true" : "false");
  if (n.is_array()) return "an array";
  if (n.is_table()) return "a table";
  return "a date or time";
}

// A TOML value. Integers are accepted where numbers are expected, never the other way round.
template <class T>
T value_from_toml(const Field<T>& f, const toml::node& n, const std::string& where) {
  auto bad = [&]() -> T {
    TRI_FAIL("{}: expected {}, got {}", where, expected_text<T>(), describe_toml(n));
  };
  if constexpr (std::is_same_v<T, int> || std::is_same_v<T, int64_t>) {
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

std::string describe_json(const json& j) {
  if (j.is_string()) return fmt::format("the string '{}'", j.get<std::string>());
  if (j.is_boolean()) return fmt::format("the boolean {}", j.dump());
  if (j.is_number_integer()) return fmt::format("the integer {}", j.dump());
  if (j.is_number()) return fmt::format("the number {}", j.dump());
  if (j.is_null()) return "null";
  if (j.is_array()) return "an array";
  return "an object";
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
  if constexpr (std::is_same_v<T, int> || std::is_same_v<T, int64_t>) {
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

// ---------------------------------------------------------------------------------------------
// Names and suggestions.

struct NameInfo {
  std::string_view section;
  std::string_view name;
  std::string_view aliases;
  bool is_bool;
};

const std::vector<NameInfo>& all_names() {
  static const std::vector<NameInfo> names = [] {
    std::vector<NameInfo> out;
    const RunConfig c;
    for_each_field(c, [&](std::string_view section, const auto& f, const auto& x) {
      out.push_back({section, f.name, f.aliases, std::is_same_v<std::decay_t<decltype(x)>, bool>});
    });
    return out;
  }();
  return names;
}

const NameInfo* find_name(std::string_view name) {
  for (const NameInfo& n : all_names()) {
    if (n.name == name) return &n;
  }
  return nullptr;
}

std::string normalize(std::string_view s) {
  std::string out;
  for (char ch : s) {
    out += ch == '-' ? '_' : static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  }
  return out;
}

// Edit distance with adjacent transpositions counted as one edit (optimal string alignment).
size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.size()][b.size()];
}

std::string initials(std::string_view s) {
  std::string out;
  bool start = true;
  for (char ch : s) {
    if (ch == '_') {
      start = true;
    } else if (start) {
      out += ch;
      start = false;
    }
  }
  return out;
}

// How far `unknown` (normalised) is from a known name and its aliases, in edits times two,
// plus one when only an alias is that close, so that a name wins a tie with an alias.
size_t distance_to(std::string_view unknown, std::string_view name, std::string_view aliases) {
  size_t best = 2 * edit_distance(unknown, name);
  std::istringstream words{std::string(aliases)};
  for (std::string alias; words >> alias;) {
    best = std::min(best, 2 * edit_distance(unknown, alias) + 1);
  }
  if (unknown.find('_') != std::string_view::npos && initials(unknown) == name) best = 0;
  if (unknown.size() >= 3 && name.size() >= 3 &&
      (unknown.starts_with(name) || name.starts_with(unknown))) {
    best = std::min<size_t>(best, 2);
  }
  return best;
}

struct Candidate {
  std::string_view name;
  std::string_view aliases;
  std::string label;  // how the suggestion is written: "'lr'", "'--lr'", "'lr' in [optim]"
};

// The closest candidates, if any is close enough to be a likely typo.
std::vector<const Candidate*> closest(std::string_view unknown, const std::vector<Candidate>& cands) {
  const std::string u = normalize(unknown);
  const size_t threshold = std::max<size_t>(1, std::min<size_t>(3, u.size() / 3));
  size_t best = 2 * threshold + 2;
  std::vector<const Candidate*> out;
  for (const Candidate& c : cands) {
    const size_t d = distance_to(u, c.name, c.aliases);
    if (d < best) {
      best = d;
      out.clear();
    }
    if (d == best) out.push_back(&c);
  }
  return out;
}

// "did you mean 'a'?" / "did you mean 'a', 'b' or 'c'?" / "" when nothing is close.
std::string did_you_mean(const std::vector<const Candidate*>& hits) {
  if (hits.empty()) return {};
  std::string s = "did you mean " + hits[0]->label;
  for (size_t i = 1; i < hits.size(); ++i) {
    s += (i + 1 == hits.size() ? " or " : ", ") + hits[i]->label;
  }
  return s + "?";
}

std::string section_names_text() {
  std::vector<std::string> names;
  for (const Section& s : kSections) names.push_back(fmt::format("[{}]", s.name));
  return fmt::format("{}", fmt::join(names, ", "));
}

bool is_section(std::string_view name) {
  return std::any_of(std::begin(kSections), std::end(kSections),
                     [&](const Section& s) { return s.name == name; });
}

// Applies fn(field, value) to the field `name` of table `section`; false when there is none.
template <class Fn>
bool with_field(RunConfig& c, std::string_view section, std::string_view name, Fn&& fn) {
  bool found = false;
  for_each_field(c, [&](std::string_view s, const auto& f, auto& x) {
    if (!found && s == section && f.name == name) {
      found = true;
      fn(f, x);
    }
  });
  return found;
}

// The error for a key that names no field of [section] (TOML or JSON).
[[noreturn]] void unknown_key(std::string_view key, std::string_view section, std::string_view where,
                              std::string_view suffix) {
  std::vector<Candidate> same, other;
  std::vector<std::string_view> section_fields;
  for (const NameInfo& n : all_names()) {
    if (n.section == section) {
      same.push_back({n.name, n.aliases, fmt::format("'{}'", n.name)});
      section_fields.push_back(n.name);
    } else {
      other.push_back({n.name, n.aliases, fmt::format("'{}' in [{}]", n.name, n.section)});
    }
  }
  const std::string head = fmt::format("unknown option '{}' in {} [{}]", key, where, section);
  if (const NameInfo* n = find_name(key)) {
    TRI_FAIL("{}; '{}' belongs in [{}]{}", head, key, n->section, suffix);
  }
  std::string hint = did_you_mean(closest(key, same));
  if (hint.empty()) hint = did_you_mean(closest(key, other));
  if (hint.empty()) {
    hint = fmt::format("the options of [{}] are {}", section,
                       join(std::span<const std::string_view>(section_fields), ", "));
  }
  TRI_FAIL("{}; {}{}", head, hint, suffix);
}

[[noreturn]] void unknown_table(std::string_view key, std::string_view where, std::string_view suffix) {
  std::vector<Candidate> cands;
  for (const Section& s : kSections) cands.push_back({s.name, s.aliases, fmt::format("[{}]", s.name)});
  if (const NameInfo* n = find_name(key)) {
    TRI_FAIL("option '{}' in {} must be inside its table: put it under [{}]{}", key, where,
             n->section, suffix);
  }
  std::string hint = did_you_mean(closest(key, cands));
  if (hint.empty()) hint = "the tables are " + section_names_text();
  TRI_FAIL("unknown table [{}] in {}; {}{}", key, where, hint, suffix);
}

std::string line_suffix(const toml::node& n) {
  const auto& begin = n.source().begin;
  return begin.line ? fmt::format(" (line {})", begin.line) : std::string();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// TOML.

void apply_toml(RunConfig& cfg, std::string_view toml_text, std::string_view source_name,
                FieldNames* set_fields) {
  toml::table root;
  try {
    root = toml::parse(toml_text, source_name);
  } catch (const toml::parse_error& e) {
    TRI_FAIL("{}:{}:{}: TOML syntax error: {}", source_name, e.source().begin.line,
             e.source().begin.column, e.description());
  }
  for (auto&& [key, section_node] : root) {
    const std::string section(key.str());
    const toml::node& node = section_node;
    if (!is_section(section)) unknown_table(section, source_name, line_suffix(node));
    const toml::table* table = node.as_table();
    if (!table) {
      TRI_FAIL("'{}' in {} must be a table ([{}] followed by its keys), got {}{}", section,
               source_name, section, describe_toml(node), line_suffix(node));
    }
    for (auto&& [field_key, field_node] : *table) {
      const std::string name(field_key.str());
      const toml::node& value = field_node;
      const std::string where = fmt::format("'{}' in {} [{}]{}", name, source_name, section,
                                            line_suffix(value));
      const bool found = with_field(cfg, section, name, [&](const auto& f, auto& x) {
        assign(f, x, value_from_toml(f, value, where), where);
        if (set_fields) set_fields->insert(std::string(f.name));
      });
      if (!found) unknown_key(name, section, source_name, line_suffix(value));
    }
  }
}

void apply_toml_file(RunConfig& cfg, const std::string& path, FieldNames* set_fields) {
  std::ifstream in(path, std::ios::binary);
  TRI_CHECK(in.good(), "cannot read the config file '{}': {}; configs/ holds examples", path,
            std::strerror(errno));
  std::stringstream text;
  text << in.rdbuf();
  apply_toml(cfg, text.str(), path, set_fields);
}

// ---------------------------------------------------------------------------------------------
// Command line.

bool run_config_wants_help(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "--help" || a == "-h") return true;
  }
  return false;
}

RunConfig parse_run_config(int argc, char** argv, FieldNames* given) {
  std::vector<std::string_view> args(argv + std::min(argc, 1), argv + argc);
  RunConfig cfg;

  // Pass 1: the TOML file, so that flags override it wherever they appear.
  std::optional<std::string> config_path;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string_view path;
    if (args[i] == "--config") {
      TRI_CHECK(i + 1 < args.size(), "--config needs a file name: --config FILE.toml");
      path = args[++i];
    } else if (args[i].starts_with("--config=")) {
      path = args[i].substr(9);
    } else {
      continue;
    }
    TRI_CHECK(!config_path, "--config given twice ('{}' and '{}'); give one file", *config_path,
              path);
    config_path = std::string(path);
  }
  if (config_path) apply_toml_file(cfg, *config_path, given);

  // Pass 2: flags, in order (a repeated flag: the last one wins).
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string_view arg = args[i];
    if (arg == "--help" || arg == "-h") continue;
    if (arg == "--config") {
      ++i;
      continue;
    }
    if (arg.starts_with("--config=")) continue;
    TRI_CHECK(arg.starts_with("--") && arg.size() > 2,
              "unexpected argument '{}': options are written --name VALUE (see --help)", arg);
    std::string_view flag = arg.substr(2);
    std::optional<std::string_view> inline_value;
    if (const size_t eq = flag.find('='); eq != std::string_view::npos) {
      inline_value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
    }
    // --grad-accum names the field grad_accum; --grad_accum is refused (with a hint) so that
    // each option has one spelling.
    std::string name = flag.find('_') == std::string_view::npos ? std::string(flag) : std::string("?");
    std::replace(name.begin(), name.end(), '-', '_');
    const std::string shown = fmt::format("--{}", flag);

    const NameInfo* info = find_name(name);
    bool negated = false;
    if (!info && name.starts_with("no_")) {
      const NameInfo* base = find_name(name.substr(3));
      if (base && base->is_bool) {
        TRI_CHECK(!inline_value, "{} takes no value", shown);
        info = base;
        negated = true;
        name = name.substr(3);
      }
    }
    if (!info) {
      std::vector<Candidate> cands;
      for (const NameInfo& n : all_names()) {
        cands.push_back({n.name, n.aliases, fmt::format("'--{}'", kebab(n.name))});
      }
      cands.push_back({"config", "config_file toml", "'--config'"});
      std::string hint = did_you_mean(closest(flag, cands));
      if (hint.empty()) {
        std::vector<std::string> flags;
        for (const NameInfo& n : all_names()) flags.push_back("--" + kebab(n.name));
        hint = fmt::format("the options are --config, {} (see --help)", fmt::join(flags, ", "));
      }
      if (flag.find('_') != std::string_view::npos) {
        hint = fmt::format("flags are written with dashes (--{}); {}", kebab(flag), hint);
      }
      TRI_FAIL("unknown option '{}'; {}", shown, hint);
    }

    with_field(cfg, info->section, name, [&](const auto& f, auto& x) {
      using T = std::decay_t<decltype(x)>;
      const std::string where = "--" + kebab(f.name);
      if (given) given->insert(std::string(f.name));
      if constexpr (std::is_same_v<T, bool>) {
        if (negated) {
          x = false;
        } else if (inline_value) {
          x = value_from_text(f, *inline_value, where);
        } else if (i + 1 < args.size() && bool_from_text(args[i + 1])) {
          x = *bool_from_text(args[++i]);
        } else {
          x = true;
        }
      } else {
        std::string_view text;
        if (inline_value) {
          text = *inline_value;
        } else {
          TRI_CHECK(i + 1 < args.size() && !args[i + 1].starts_with("--"),
                    "missing value for {}: expected {} ({})", where, expected_text<T>(), f.help);
          text = args[++i];
        }
        assign(f, x, value_from_text(f, text, where), where);
      }
    });
  }

  finalize_run_config(cfg);
  TRI_CHECK(!cfg.data.data.empty() || !cfg.train.resume.empty(),
            "no training data: give --data PREFIX (or data = \"PREFIX\" under [data]) naming "
            "PREFIX_train.bin and PREFIX_val.bin, as written by `trident prepare --out PREFIX`");
  return cfg;
}

std::vector<FieldChange> override_fields(RunConfig& dst, const RunConfig& src, const FieldNames& names) {
  std::vector<FieldChange> changes;
  for_each_field(dst, [&](std::string_view section, const auto& f, auto& x) {
    if (!names.contains(f.name)) return;
    for_each_field(src, [&](std::string_view, const auto& g, const auto& y) {
      if constexpr (std::is_same_v<std::decay_t<decltype(x)>, std::decay_t<decltype(y)>>) {
        if (g.name != f.name || x == y) return;
        auto shown = [](const auto& v) {
          const std::string t = value_text(v);
          return t.empty() ? std::string("''") : t;
        };
        changes.push_back({std::string(section), std::string(f.name),
                           fmt::format("--{} {} -> {}", kebab(f.name), shown(x), shown(y))});
        x = y;
      }
    });
  });
  return changes;
}

// ---------------------------------------------------------------------------------------------
// Relations between fields.

void finalize_run_config(RunConfig& cfg) {
  if (!cfg.optim.min_lr) cfg.optim.min_lr = cfg.optim.lr / 10;
  validate_run_config(cfg);
}

void validate_run_config(const RunConfig& cfg) {
  for_each_field(cfg, [](std::string_view section, const auto& f, const auto& x) {
    const std::string problem = range_problem(f, x);
    TRI_CHECK(problem.empty(), "[{}] {} = {} is out of range: {} ({})", section, f.name,
              value_text(x), problem, f.help);
  });
  const DataOptions& d = cfg.data;
  const ParallelOptions& p = cfg.parallel;
  const OptimOptions& o = cfg.optim;
  const TrainOptions& t = cfg.train;

  TRI_CHECK(d.batch_size % p.dp == 0,
            "batch size {} is not divisible by dp {}: each data-parallel rank takes "
            "batch_size / dp sequences; use a batch size that is a multiple of {}",
            d.batch_size, p.dp, p.dp);
  TRI_CHECK(p.dp % p.ep == 0,
            "ep {} does not divide dp {}: expert parallelism splits the experts over groups of ep "
            "data-parallel ranks; choose an ep that divides dp (or a dp that is a multiple of {})",
            p.ep, p.dp, p.ep);
  TRI_CHECK(p.micro_batches == 0 || d.grad_accum == 1 || p.micro_batches == d.grad_accum,
            "micro_batches {} and grad_accum {} disagree: both give the micro-batches per step "
            "(micro_batches 0 means grad_accum); set only one",
            p.micro_batches, d.grad_accum);
  const int m = cfg.num_micro_batches();
  TRI_CHECK(cfg.rank_batch() % m == 0,
            "each data-parallel rank's {} sequences (batch_size {} / dp {}) cannot be split into "
            "{} equal micro-batches ({} = {}); use a micro-batch count that divides {}, or a "
            "batch size that is a multiple of dp * {} = {}",
            cfg.rank_batch(), d.batch_size, p.dp, m,
            p.micro_batches > 0 ? "micro_batches" : "grad_accum", m, cfg.rank_batch(), m,
            p.dp * m);
  TRI_CHECK(p.virtual_stages == 1 || p.schedule == PipelineSchedule::kInterleaved,
            "virtual_stages {} needs schedule interleaved (got {}): only the interleaved "
            "schedule places several model chunks on one pipeline rank",
            p.virtual_stages, enum_name(p.schedule));
  TRI_CHECK(p.offload == Offload::kNone || !p.offload_dir.empty(),
            "--offload {} needs --offload-dir DIR: an existing directory on a local disk with room "
            "for 8 bytes per parameter (the AdamW moments)", enum_name(p.offload));
  TRI_CHECK(p.offload_block_kib % 4 == 0,
            "offload_block_kib {} is not a multiple of 4: direct I/O moves whole 4 KiB pages; use "
            "{}", p.offload_block_kib, (p.offload_block_kib + 3) / 4 * 4);
  TRI_CHECK(!o.min_lr || *o.min_lr <= o.lr,
            "min_lr {} is above lr {}: the schedule decays from lr down to min_lr", *o.min_lr,
            o.lr);
  TRI_CHECK(t.init_from.empty() || t.resume.empty(),
            "init_from '{}' and resume '{}' are both set: init_from starts a new run from "
            "weights, resume continues a run; give one",
            t.init_from, t.resume);
  (void)parse_preempt_signals(t.preempt_signals);  // names checked before anything starts
  TRI_CHECK(t.pipeline_timeline.empty() || p.pp > 1,
            "--pipeline-timeline {} needs a pipeline (--pp > 1; this run has pp {})",
            t.pipeline_timeline, p.pp);
  TRI_CHECK(cfg.model.n_positions == 0 || d.seq_len <= cfg.model.n_positions,
            "seq_len {} is longer than n_positions {}: the position table holds n_positions "
            "tokens",
            d.seq_len, cfg.model.n_positions);
}

// ---------------------------------------------------------------------------------------------
// Help, printing.

std::string run_config_help() {
  std::string out =
      "Usage: trident train [--config FILE.toml] [--option VALUE ...]\n"
      "\n"
      "Options come from the defaults, then the TOML file given by --config, then the command\n"
      "line, later ones winning. The flag --grad-accum is the key grad_accum in the TOML table\n"
      "[data], and so on for every option below. Booleans: --name, --no-name, --name=false.\n"
      "configs/ holds commented examples.\n"
      "\n";
  auto line = [&](std::string left, std::string_view text) {
    if (left.size() < 32) left.resize(32, ' ');
    else left += "  ";
    out += left + std::string(text) + "\n";
  };
  line("  --config FILE.toml", "read options from this TOML file");
  line("  --help", "print this help");
  for (const Section& s : kSections) {
    out += fmt::format("\n[{}] {}\n", s.name, s.title);
    const RunConfig c;
    for_each_field(c, [&](std::string_view section, const auto& f, const auto& x) {
      using T = std::decay_t<decltype(x)>;
      if (section != s.name) return;
      std::string value_name;
      if constexpr (std::is_same_v<T, bool>) {
        value_name = "";
      } else if constexpr (std::is_enum_v<T>) {
        value_name = join(enum_names(T{}), "|");
      } else if constexpr (std::is_same_v<T, std::string>) {
        value_name = f.value_name.empty() ? "TEXT" : std::string(f.value_name);
      } else if constexpr (std::is_same_v<T, int> || std::is_same_v<T, int64_t>) {
        value_name = std::isfinite(f.bounds.max)
                         ? fmt::format("{}..{}", f.bounds.min, f.bounds.max)
                         : std::string("N");
      } else {
        value_name = "NUM";
      }
      std::string left = "  --" + kebab(f.name);
      if (!value_name.empty()) left += " " + value_name;
      std::string def = f.default_text.empty() ? value_text(f.default_value) : std::string(f.default_text);
      if constexpr (std::is_same_v<T, bool>) {
        def += fmt::format("; --no-{} to turn off", kebab(f.name));
      }
      line(left, fmt::format("{} (default: {})", f.help, def));
    });
  }
  return out;
}

std::string format_run_config(const RunConfig& cfg) {
  std::string out;
  for (const Section& s : kSections) {
    out += fmt::format("{}[{}]\n", out.empty() ? "" : "\n", s.name);
    for_each_field(cfg, [&](std::string_view section, const auto& f, const auto& x) {
      using T = std::decay_t<decltype(x)>;
      if (section != s.name) return;
      const bool is_default = [&] {
        if constexpr (kIsOptional<T>) return !x.has_value();
        else return x == f.default_value;
      }();
      std::string entry;
      if constexpr (kIsOptional<T>) {
        entry = x ? fmt::format("{} = {}", f.name, toml_literal(*x))
                  : fmt::format("# {} = ({})", f.name, f.default_text);
      } else {
        entry = fmt::format("{} = {}", f.name, toml_literal(x));
      }
      if (!is_default) {
        if (entry.size() < 36) entry.resize(36, ' ');
        else entry += "  ";
        entry += fmt::format("# default: {}", f.default_text.empty() ? value_text(f.default_value)
                                                                      : std::string(f.default_text));
      }
      out += entry + "\n";
    });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// JSON and hash.

nlohmann::json to_json(const RunConfig& cfg) {
  json j = json::object();
  for (const Section& s : kSections) j[std::string(s.name)] = json::object();
  for_each_field(cfg, [&](std::string_view section, const auto& f, const auto& x) {
    j[std::string(section)][std::string(f.name)] = value_to_json(x);
  });
  return j;
}

RunConfig run_config_from_json(const nlohmann::json& j, std::string_view kWhere) {
  TRI_CHECK(j.is_object(), "{} must be an object with the tables {}, got {}", kWhere,
            section_names_text(), describe_json(j));
  RunConfig cfg;
  for (const auto& section_item : j.items()) {
    const std::string& section = section_item.key();
    const json& table = section_item.value();
    if (!is_section(section)) unknown_table(section, kWhere, "");
    TRI_CHECK(table.is_object(), "'{}' in {} must be an object, got {}", section, kWhere,
              describe_json(table));
    for (const auto& item : table.items()) {
      const std::string& name = item.key();
      const json& value = item.value();
      const std::string where = fmt::format("'{}' in {} [{}]", name, kWhere, section);
      const bool found = with_field(cfg, section, name, [&](const auto& f, auto& x) {
        assign(f, x, value_from_json(f, value, where), where);
      });
      if (!found) unknown_key(name, section, kWhere, "");
    }
  }
  finalize_run_config(cfg);
  return cfg;
}

uint64_t run_config_hash(const RunConfig& cfg) { return fnv1a64(to_json(cfg).dump()); }

// ---------------------------------------------------------------------------------------------
// The model.

nn::ModelConfig resolve_model_config(const ModelOptions& m) {
  namespace fs = std::filesystem;
  nn::ModelConfig g;
  const auto presets = nn::model_preset_names();
  if (std::find(presets.begin(), presets.end(), m.model) != presets.end()) {
    g = nn::model_preset(m.model);
  } else {
    fs::path path = m.model;
    std::error_code ec;
    if (fs::is_directory(path, ec)) path /= "config.json";
    TRI_CHECK(fs::is_regular_file(path, ec),
              "model '{}' is neither a preset ({}) nor a readable config.json", m.model,
              fmt::join(presets, ", "));
    // One reader for every config.json (the checkpoint's): model_type picks the family, and
    // a key the family does not implement is refused, never silently dropped.
    g = ckpt::read_model_config(path.string());
  }
  if (m.n_layer) g.n_layer = m.n_layer;
  if (m.n_head) g.n_head = m.n_head;
  if (m.n_kv_head) g.n_kv_head = m.n_kv_head;
  if (m.n_inner) g.n_inner = m.n_inner;
  if (m.n_embd) g.n_embd = m.n_embd;
  if (m.n_positions) g.n_positions = m.n_positions;
  if (m.vocab_size) g.vocab_size = m.vocab_size;
  if (m.vocab_pad_multiple) g.vocab_pad_multiple = m.vocab_pad_multiple;
  g = with_objective_overrides(g, m);
  g.validate();
  return g;
}

nn::ModelConfig with_objective_overrides(nn::ModelConfig g, const ModelOptions& m) {
  if (m.moe_aux_loss_coef) {
    TRI_CHECK(g.is_moe(), "--moe-aux-loss-coef {} weights a mixture-of-experts load-balancing loss, but "
              "this model ({}) has no experts; drop the flag", *m.moe_aux_loss_coef, nn::family_name(g.family));
    g.router_aux_loss_coef = *m.moe_aux_loss_coef;
  }
  return g;
}

}  // namespace trident::train
