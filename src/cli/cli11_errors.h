// The subcommands parsed with CLI11 report a bad command line the way the rest of trident
// reports errors ("error: ..." on stderr, exit code 1), not with CLI11's bare message.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

namespace trident::cli {

inline void use_trident_error_format(CLI::App& app) {
  app.failure_message([](const CLI::App*, const CLI::Error& e) {
    return "error: " + std::string(e.what()) + "\nRun with --help for more information.\n";
  });
}

}  // namespace trident::cli
