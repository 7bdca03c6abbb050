// `trident ckpt info DIR`: prints what a checkpoint holds, then verifies that it loads (every
// tensor present, the right shape, finite; config.json, optimizer state and trident.json
// consistent) and exits non-zero naming the first problem. Checkpoints are layout-free (logical
// tensors), so there is no `ckpt convert`: any layout loads any checkpoint directly.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <cstdio>
#include <fstream>
#include <optional>
#include <string>

#include "ckpt/checkpoint.h"
#include "ckpt/checksums.h"
#include "cli/cli11_errors.h"
#include "cli/commands.h"
#include "core/check.h"
#include "quant/quantized_model.h"
#include "train/run_config.h"

namespace trident::cli {

namespace {
// trident.json's run configuration must be one `train --resume` accepts.
void check_run_config(const ckpt::LoadedCheckpoint& ck) {
  if (!ck.trident.is_object() || !ck.trident.contains("run_config")) return;
  try {
    (void)train::run_config_from_json(ck.trident["run_config"]);
  } catch (const Error& e) {
    TRI_FAIL("{}/{}: field 'run_config' is not a run configuration this version accepts: {}", ck.path,
             ckpt::kTridentFile, e.what());
  }
}
}  // namespace

int run_ckpt(int argc, char** argv) {
  CLI::App app{"Inspect checkpoints. Checkpoints hold logical (unsharded) tensors, so one "
               "written by any layout loads into any other; no conversion step exists.",
               "trident ckpt"};
  app.require_subcommand(1);
  std::string path;
  auto* info = app.add_subcommand(
      "info", "Print a checkpoint's step, model config, tensors (name, shape, dtype), parameter "
              "count and whether optimizer state is present; then read every tensor and exit "
              "non-zero, naming the file and tensor or field, unless it all loads and is finite");
  info->add_option("DIR", path,
                   "a step directory, a checkpoint root holding 'latest', or a Hugging Face "
                   "GPT-2, Llama or Mixtral directory (safetensors + config.json)")
      ->required();
  if (const std::optional<int> rc = parse_command_line(app, argc, argv)) return *rc;
  if (info->parsed() && quant::is_quantized_checkpoint(path)) {
    std::fputs(quant::describe_quantized(path).c_str(), stdout);
    const quant::QuantizedModel m = quant::load_quantized(path, /*check_checksums=*/false);  // verifies every tensor
    // ... and the files against their recorded CRC-32Cs (a QLoRA step directory's trident.json, else config.json).
    nlohmann::json trident;
    if (std::ifstream in(path + "/" + ckpt::kTridentFile); in) trident = nlohmann::json::parse(in, nullptr, false);
    const int files = ckpt::verify_checksums(path, trident);
    std::fputs(fmt::format("ok: {} packed matrices and {} fp32 tensors load, scales finite and positive; {}\n",
                           m.matrices.size(), m.tensors.size(),
                           files > 0 ? fmt::format("{} file(s) match their recorded crc32c", files)
                                     : std::string("no checksums recorded (written before they were)"))
                   .c_str(),
               stdout);
  } else if (info->parsed()) {
    // trident::Error goes to main: a message naming the file and the problem, exit status 1.
    const std::string text = ckpt::describe_checkpoint(path);
    std::fputs(text.c_str(), stdout);
    std::fflush(stdout);
    const std::string verified = ckpt::verify_checkpoint(path);
    check_run_config(ckpt::load_checkpoint(path, ckpt::ChecksumCheck::kSkip));  // verify_checkpoint checked them
    std::fputs((verified + "\n").c_str(), stdout);
  }
  return 0;
}

}  // namespace trident::cli
