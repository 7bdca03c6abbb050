// The run config as text: --help (every option by table, with its default and description) and
// the TOML dump that `trident train --config` reads back (see run_config.h).
#include <fmt/format.h>

#include "train/run_config.h"
#include "train/run_config_values.h"

namespace trident::train {

using namespace detail;

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

}  // namespace trident::train
