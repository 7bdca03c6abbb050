// The command line of `trident train`: --config FILE.toml first, then the flags in order (see
// parse_run_config in run_config.h).
#include <fmt/format.h>

#include <algorithm>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/check.h"
#include "train/run_config.h"
#include "train/run_config_names.h"
#include "train/run_config_values.h"

namespace trident::train {

using namespace detail;

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

}  // namespace trident::train
