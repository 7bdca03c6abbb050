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
#include "ckpt/checkpoint.h"
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
  app.add_option("--base", base_path, "the base checkpoint the adapters were trained on (a step directory, a "
                                      "root holding 'latest', or a Hugging Face directory)")->required();
  app.add_option("--adapter", adapter_path, "a LoRA run's checkpoint (holding adapter_model.safetensors and "
                                            "adapter_config.json), or its root")->required();
  app.add_option("--out", out_dir, "directory to write (must not exist or be empty)")->required();
  use_trident_error_format(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
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
  const std::string adapter_dir = ckpt::resolve_checkpoint(adapter_path);
  const std::string config_file = adapter_dir + "/" + ckpt::kAdapterConfigFile;
  const std::string tensor_file = adapter_dir + "/" + ckpt::kAdapterFile;
  TRI_CHECK(fs::is_regular_file(config_file) && fs::is_regular_file(tensor_file),
            "--adapter {} holds no {} and {}: give a checkpoint of a `train --lora-rank` run", adapter_dir,
            ckpt::kAdapterConfigFile, ckpt::kAdapterFile);
  nlohmann::json adapter_json;
  std::ifstream(config_file) >> adapter_json;
  nn::ModelConfig cfg = base.config;
  cfg.lora = nn::lora_config_from_adapter_json(cfg, adapter_json, config_file);
  cfg.validate();  // e.g. a rank no target of this base allows
  const ckpt::SafetensorsReader adapters(tensor_file);
  // Every adapter tensor must be one this base expects, with its shape: nothing left unmerged.
  std::map<std::string, Shape> expected;
  for (const auto& spec : nn::lora_tensor_specs(cfg)) expected[nn::peft_tensor_name(cfg, spec.name)] = spec.shape;
  for (const ckpt::TensorInfo& info : adapters.tensors()) {
    const std::string& name = info.name;
    const auto it = expected.find(name);
    TRI_CHECK(it != expected.end(), "{} holds {}, which is no adapter of base {} ({}): the adapter was trained on "
              "another model", tensor_file, name, base.path, base.config.describe());
    TRI_CHECK(info.shape == it->second, "{}: {} is {} but base {} needs {}: the adapter was trained on another "
              "model shape", tensor_file, name, shape_str(info.shape), base.path, shape_str(it->second));
  }
  TRI_CHECK(adapters.tensors().size() == expected.size(), "{} holds {} adapter tensors; its adapter_config.json "
            "({} targets on {} layers) needs {}", tensor_file, adapters.tensors().size(), cfg.lora.targets.size(),
            cfg.n_layer, expected.size());

  nn::ModelConfig out_cfg = base.config;  // the merged model is a plain one
  ckpt::SafetensorsWriter writer;
  std::vector<std::vector<float>> keep;
  int merged = 0;
  for (const auto& spec : nn::model_tensor_specs(out_cfg)) {
    keep.emplace_back(static_cast<std::size_t>(shape_numel(spec.shape)));
    float* w = keep.back().data();
    base.read_param(spec.name, spec.shape, w);
    ckpt::check_finite(w, shape_numel(spec.shape), spec.name, base.model.file_of(base.model_prefix + spec.name));
    const int layer = nn::architecture(cfg.family).layer_of(spec.name);
    if (layer >= 0) {
      for (const nn::LoraTarget& t : nn::selected_lora_targets(cfg, layer)) {
        if (t.base.name != spec.name) continue;
        const nn::LoraDecls d = nn::lora_decls(t.base, cfg.lora.rank);
        std::vector<float> a(static_cast<std::size_t>(shape_numel(d.a.shape)));
        std::vector<float> b(static_cast<std::size_t>(shape_numel(d.b.shape)));
        adapters.read(nn::peft_tensor_name(cfg, d.a.name), d.a.shape, a.data());
        adapters.read(nn::peft_tensor_name(cfg, d.b.name), d.b.shape, b.data());
        ckpt::check_finite(a.data(), shape_numel(d.a.shape), d.a.name, tensor_file);
        ckpt::check_finite(b.data(), shape_numel(d.b.shape), d.b.name, tensor_file);
        nn::merge_lora(t.base, cfg.lora.scale(), cfg.lora.rank, w, a.data(), b.data());
        ++merged;
      }
    }
    writer.add_tensor(spec.name, spec.shape, w);
  }
  writer.write(out.path() + "/" + ckpt::kModelFile);
  ckpt::write_file_atomic(out.path() + "/" + ckpt::kConfigFile, nn::model_config_to_hf_json(out_cfg).dump(2) + "\n");
  ckpt::commit_new_output_dir(out);
  fmt::print("merged {} adapters (r {}, alpha {:g}, {}) of {} into {} -> {}\n", merged, cfg.lora.rank, cfg.lora.alpha,
             fmt::format("{}", fmt::join(cfg.lora.targets, ",")), adapter_dir, base.path, out_dir);
  return 0;
}

}  // namespace trident::cli
