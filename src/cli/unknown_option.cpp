// Unknown options of the CLI11 subcommands (see unknown_option.h).
#include "cli/unknown_option.h"

#include <fmt/format.h>

#include <algorithm>
#include <string_view>
#include <utility>
#include <vector>

#include "train/run_config_names.h"

namespace trident::cli {

namespace {

// Every long option name ("--name", dashes and all) of `app` and of its subcommands.
void collect_long_names(const CLI::App& app, std::vector<std::string>& out) {
  for (const CLI::Option* opt : app.get_options()) {
    for (const std::string& name : opt->get_lnames()) {
      const std::string flag = "--" + name;
      if (std::find(out.begin(), out.end(), flag) == out.end()) out.push_back(flag);
    }
  }
  for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
    collect_long_names(*sub, out);
  }
}

}  // namespace

std::optional<std::string> unknown_option_message(const CLI::App& app, int argc, char** argv) {
  std::vector<std::string> names;
  collect_long_names(app, names);
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--") break;  // what follows is values, by convention
    if (!arg.starts_with("--") || arg.size() == 2) continue;
    const std::string_view flag = arg.substr(0, arg.find('='));
    bool known = false;
    for (const std::string& n : names) known = known || n == flag;
    if (known) continue;
    // closest() compares snake_case names (train's fields); the typo is normalised the same way.
    std::vector<std::string> bare;
    for (const std::string& n : names) {
      std::string b = n.substr(2);
      std::replace(b.begin(), b.end(), '-', '_');
      bare.push_back(std::move(b));
    }
    std::vector<train::detail::Candidate> cands;
    for (std::size_t k = 0; k < names.size(); ++k) {
      cands.push_back({bare[k], {}, fmt::format("'{}'", names[k])});
    }
    std::string hint = train::detail::did_you_mean(train::detail::closest(flag.substr(2), cands));
    if (hint.empty()) {
      std::vector<std::string> listed;
    for (const std::string& n : names) {
      if (n != "--help") listed.push_back(n);
    }
    hint = listed.empty() ? fmt::format("'{}' takes no options but --help", app.get_name())
                          : fmt::format("the options of '{}' are {} (see --help)", app.get_name(), fmt::join(listed, ", "));
    }
    return fmt::format("unknown option '{}'; {}", flag, hint);
  }
  return std::nullopt;
}

}  // namespace trident::cli
