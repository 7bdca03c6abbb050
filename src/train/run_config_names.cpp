// Option names and suggestions (see run_config_names.h).
#include "train/run_config_names.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <sstream>

#include "core/check.h"
#include "train/run_config_values.h"

namespace trident::train::detail {

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

namespace {

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

}  // namespace

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

}  // namespace trident::train::detail
