// The option names of the run config, and the errors for names that are not one: the list of
// every field (table, name, aliases), lookup, "did you mean" suggestions (edit distance with
// transpositions, aliases, initials, prefixes), and the unknown-key and unknown-table errors
// that TOML, JSON and the command line share. Internal to train/run_config*.cpp.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "train/run_config.h"

namespace trident::train::detail {

struct NameInfo {
  std::string_view section;
  std::string_view name;
  std::string_view aliases;
  bool is_bool;
};

// Every field of the run config, in field order.
const std::vector<NameInfo>& all_names();
const NameInfo* find_name(std::string_view name);

struct Candidate {
  std::string_view name;
  std::string_view aliases;
  std::string label;  // how the suggestion is written: "'lr'", "'--lr'", "'lr' in [optim]"
};

// The closest candidates, if any is close enough to be a likely typo.
std::vector<const Candidate*> closest(std::string_view unknown, const std::vector<Candidate>& cands);
// "did you mean 'a'?" / "did you mean 'a', 'b' or 'c'?" / "" when nothing is close.
std::string did_you_mean(const std::vector<const Candidate*>& hits);
std::string section_names_text();  // "[model], [data], ..."
bool is_section(std::string_view name);

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
                              std::string_view suffix);
// The error for a table that is not one of kSections (or a field outside its table).
[[noreturn]] void unknown_table(std::string_view key, std::string_view where, std::string_view suffix);

}  // namespace trident::train::detail
