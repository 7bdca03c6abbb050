// `trident ckpt info DIR`: prints what a checkpoint holds. Checkpoints are layout-free (logical
// tensors), so there is no `ckpt convert`: any layout loads any checkpoint directly.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "ckpt/checkpoint.h"
#include "cli/cli11_errors.h"
#include "cli/commands.h"

namespace trident::cli {

int run_ckpt(int argc, char** argv) {
  CLI::App app{"Inspect checkpoints. Checkpoints hold logical (unsharded) tensors, so one "
               "written by any layout loads into any other; no conversion step exists.",
               "trident ckpt"};
  app.require_subcommand(1);
  std::string path;
  auto* info = app.add_subcommand(
      "info", "Print a checkpoint's step, model config, tensors (name, shape, dtype), parameter "
              "count and whether optimizer state is present");
  info->add_option("DIR", path,
                   "a step directory, a checkpoint root holding 'latest', or a Hugging Face "
                   "GPT-2 directory (model.safetensors + config.json)")
      ->required();
  use_trident_error_format(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (info->parsed()) {
    const std::string text = ckpt::describe_checkpoint(path);  // trident::Error goes to main
    std::fputs(text.c_str(), stdout);
  }
  return 0;
}

}  // namespace trident::cli
