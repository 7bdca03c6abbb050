// What to tell a user who passed a subcommand an option it does not have: CLI11 says only
// "The following arguments were not expected", which does not name the option meant. The
// suggestion uses train's edit-distance rule (train/run_config_names.h), so every command
// corrects typos the same way.
#pragma once

#include <CLI/CLI.hpp>

#include <optional>
#include <string>

namespace trident::cli {

// "unknown option '--max-tokens'; the options of 'trident generate' are ..." or "...; did you
// mean '--max-new-tokens'?" for the first argument of argv[1, argc) that looks like an option
// ("--name" or "--name=value") and names none of `app`'s (or its subcommands'); nullopt when
// every such argument is known (the extra argument is then a stray value).
std::optional<std::string> unknown_option_message(const CLI::App& app, int argc, char** argv);

}  // namespace trident::cli
