// `trident merge-lora`: a base checkpoint plus a LoRA run's adapters (adapter_model.safetensors
// and adapter_config.json, nn/lora_checkpoint.h) -> one full checkpoint with W += (alpha/r) B A
// in every adapted weight (nn/lora_merge.h), loadable by train/eval/generate/quantize.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "ckpt/atomic_file.h"
#include "ckpt/base_fingerprint.h"
#include "ckpt/checkpoint.h"
#include "ckpt/checksums.h"
#include "core/crc32c.h"
#include "ckpt/lora_adapters.h"
#include "ckpt/safetensors.h"
#include "cli/cli11_errors.h"
#include "cli/commands.h"
#include "core/check.h"
#include "nn/lora.h"
#include "nn/lora_checkpoint.h"
#include "nn/lora_merge.h"
#include "quant/quantized_model.h"

namespace trident::cli {

namespace fs = std::filesystem;

int run_merge_lora(int argc, char** argv) {
  CLI::App app{"Merge a LoRA run's adapters into its base: W += (alpha / r) B A in every adapted weight "
               "(transposed for GPT-2's Conv1D), written as a normal full checkpoint (model.safetensors "
               "and config.json).",
               "trident merge-lora"};
  std::string base_path, adapter_path, out_dir;
  bool allow_other_base = false;
  app.add_option("--base", base_path, "the base checkpoint the adapters were trained on (a step directory, a "
                                      "root holding 'latest', or a Hugging Face directory)")->required();
  app.add_option("--adapter", adapter_path, "a LoRA run's checkpoint (holding adapter_model.safetensors and "
                                            "adapter_config.json), or its root")->required();
  app.add_option("--out", out_dir, "directory to write (must not exist or be empty)")->required();
  app.add_flag("--allow-other-base", allow_other_base,
               "merge although the adapters' run recorded another base than --base (a different base fingerprint: "
               "docs/lora.md \"Which base\")");
  if (const std::optional<int> rc = parse_command_line(app, argc, argv)) return *rc;
  ckpt::StagedDirectory out = ckpt::stage_new_output_dir(out_dir);
  // A QLoRA run's base: merging writes fp32 weights, so the dequantized values are the base to
  // merge into; one explicit step makes that visible (and the file reusable).
  TRI_CHECK(!quant::is_quantized_checkpoint(ckpt::resolve_checkpoint(base_path)),
            "--base {} is a quantized checkpoint (a QLoRA base); merged weights are fp32, so merge into its "
            "dequantized values: `trident dequantize --ckpt {} --out DEQ`, then `trident merge-lora --base DEQ "
            "--adapter ...`", base_path, base_path);
  const ckpt::LoadedCheckpoint base = ckpt::load_checkpoint(base_path);
  TRI_CHECK(!base.config.lora.enabled(), "--base {} is itself a LoRA run's checkpoint; give the base it was "
            "trained on (its adapter_config.json names it)", base.path);
  // The adapters, checked against this base (ckpt/lora_adapters.h): one clear error each.
  const ckpt::LoadedAdapters loaded = ckpt::read_adapters(base.config, adapter_path, base.path);
  const std::string& adapter_dir = loaded.dir;
  // ... and against its identity: the base the adapters' run recorded (ckpt/base_fingerprint.h).
  if (const std::string note = ckpt::check_adapter_base(adapter_dir, base.path, "--base", allow_other_base);
      !note.empty()) {
    fmt::print(stderr, "{}\n", note);
  }
  nn::ModelConfig cfg = base.config;
  cfg.lora = loaded.lora;
  std::map<std::string, const ckpt::LoadedAdapter*> by_weight;
  for (const ckpt::LoadedAdapter& a : loaded.adapters) by_weight[a.base.name] = &a;

  nn::ModelConfig out_cfg = base.config;  // the merged model is a plain one
  ckpt::SafetensorsWriter writer;
  std::vector<std::vector<float>> keep;
  int merged = 0;
  for (const auto& spec : nn::model_tensor_specs(out_cfg)) {
    keep.emplace_back(static_cast<std::size_t>(shape_numel(spec.shape)));
    float* w = keep.back().data();
    base.read_param(spec.name, spec.shape, w);
    ckpt::check_finite(w, shape_numel(spec.shape), spec.name, base.model.file_of(base.model_prefix + spec.name));
    if (const auto it = by_weight.find(spec.name); it != by_weight.end()) {
      nn::merge_lora(it->second->base, cfg.lora.scale(), cfg.lora.rank, w, it->second->a.data(), it->second->b.data());
      ++merged;
    }
    writer.add_tensor(spec.name, spec.shape, w);
  }
  const std::uint32_t crc = writer.write(out.path() + "/" + ckpt::kModelFile);
  nlohmann::json config = nn::model_config_to_hf_json(out_cfg);
  config[ckpt::kOutputChecksumsKey] = {{ckpt::kModelFile, crc32c_string(crc)}};  // ckpt/checksums.h: loads verify it
  ckpt::write_file_atomic(out.path() + "/" + ckpt::kConfigFile, config.dump(2) + "\n");
  ckpt::commit_new_output_dir(out);
  fmt::print("merged {} adapters (r {}, alpha {:g}, {}) of {} into {} -> {}\n", merged, cfg.lora.rank, cfg.lora.alpha,
             fmt::format("{}", fmt::join(cfg.lora.targets, ",")), adapter_dir, base.path, out_dir);
  return 0;
}

}  // namespace trident::cli
