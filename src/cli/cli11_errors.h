// The subcommands parsed with CLI11 report a bad command line the way the rest of trident
// reports errors ("error: ..." on stderr, exit code 1), not with CLI11's bare message, and
// their numeric bounds in words.
#pragma once

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>

#include "cli/unknown_option.h"

namespace trident::cli {

inline void use_trident_error_format(CLI::App& app) {
  app.failure_message([](const CLI::App*, const CLI::Error& e) {
    return "error: " + std::string(e.what()) + "\nRun with --help for more information.\n";
  });
}

// app.parse with the format above: the exit code to return (after --help, or a bad command
// line: CLI11 has printed it), or nullopt to go on.
inline std::optional<int> parse_command_line(CLI::App& app, int argc, char** argv) {
  use_trident_error_format(app);
  try {
    app.parse(argc, argv);  // CLI11 skips argv[0], the subcommand name
  } catch (const CLI::ParseError& e) {
    // An option it does not have comes first, named with the likely one meant: CLI11 names
    // neither, and reports a missing required option before it. --help is a ParseError too
    // (exit code 0) and is left to CLI11.
    if (e.get_exit_code() != 0) {
      if (const std::optional<std::string> msg = unknown_option_message(app, argc, argv)) {
        fmt::print(stderr, "error: {}\nRun with --help for more information.\n", *msg);
        return e.get_exit_code();
      }
    }
    return app.exit(e);
  }
  return std::nullopt;
}

// CLI11's PositiveNumber / NonNegativeNumber print their range up to DBL_MAX; say it plainly.
inline CLI::Validator number_above(double bound, bool allow_equal) {
  const std::string need = fmt::format("{} {}", allow_equal ? ">=" : ">", bound);
  return CLI::Validator(
      [=](std::string& text) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(text.c_str(), &end);
        if (end == text.c_str() || *end != '\0') return fmt::format("'{}' is not a number", text);
        if (allow_equal ? v >= bound : v > bound) return "";
        return fmt::format("must be {}, got {}", need, text);
      },
      need);
}


// --threads N, the inference commands' thread count (0: OpenMP's default).
inline CLI::Option* add_threads_option(CLI::App& app, int& threads) {
  return app.add_option("--threads", threads, "threads; 0 = OpenMP's default")->capture_default_str()->check(number_above(0, true));
}

}  // namespace trident::cli
