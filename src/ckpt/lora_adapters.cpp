// Reading adapters against a base (see lora_adapters.h).
#include "ckpt/lora_adapters.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "ckpt/checkpoint.h"
#include "ckpt/safetensors.h"
#include "core/check.h"
#include "nn/lora_checkpoint.h"

namespace trident::ckpt {

namespace fs = std::filesystem;

bool holds_adapters(const std::string& dir) {
  return fs::is_regular_file(dir + "/" + kAdapterConfigFile) || fs::is_regular_file(dir + "/" + kAdapterFile);
}

LoadedAdapters read_adapters(const nn::ModelConfig& base, const std::string& dir_or_root, const std::string& base_name) {
  LoadedAdapters out;
  out.dir = resolve_checkpoint(dir_or_root);
  const std::string config_file = out.dir + "/" + kAdapterConfigFile;
  const std::string tensor_file = out.dir + "/" + kAdapterFile;
  TRI_CHECK(fs::is_regular_file(config_file) && fs::is_regular_file(tensor_file),
            "{} holds no {} and {} (missing: {}): give a checkpoint of a `train --lora-rank` run", out.dir,
            kAdapterConfigFile, kAdapterFile,
            fs::is_regular_file(config_file) ? kAdapterFile : kAdapterConfigFile);
  nlohmann::json j;
  try {
    std::ifstream(config_file) >> j;
  } catch (const nlohmann::json::exception& e) {
    TRI_FAIL("{} is not valid JSON ({}): the adapter checkpoint is damaged", config_file, e.what());
  }
  nn::ModelConfig cfg = base;
  cfg.lora = nn::lora_config_from_adapter_json(cfg, j, config_file);
  cfg.validate();  // e.g. a rank no target of this base allows
  out.lora = cfg.lora;
  const SafetensorsReader reader(tensor_file);
  // Every adapter tensor must be one this base expects, with its shape: none left unapplied.
  std::map<std::string, Shape> expected;
  for (const auto& spec : nn::lora_tensor_specs(cfg)) expected[nn::peft_tensor_name(cfg, spec.name)] = spec.shape;
  for (const TensorInfo& info : reader.tensors()) {
    const auto it = expected.find(info.name);
    TRI_CHECK(it != expected.end(), "{} holds {}, which is no adapter of base {} ({}): the adapter was trained on "
              "another model", tensor_file, info.name, base_name, base.describe());
    TRI_CHECK(info.shape == it->second, "{}: {} is {} but base {} needs {}: the adapter was trained on another "
              "model shape", tensor_file, info.name, shape_str(info.shape), base_name, shape_str(it->second));
  }
  TRI_CHECK(reader.tensors().size() == expected.size(), "{} holds {} adapter tensors; its adapter_config.json "
            "({} targets on {} layers) needs {}", tensor_file, reader.tensors().size(), cfg.lora.targets.size(),
            cfg.n_layer, expected.size());
  for (int layer = 0; layer < cfg.n_layer; ++layer) {
    for (const nn::LoraTarget& t : nn::selected_lora_targets(cfg, layer)) {
      const nn::LoraDecls d = nn::lora_decls(t.base, cfg.lora.rank);
      LoadedAdapter a{t.base, std::vector<float>(static_cast<std::size_t>(shape_numel(d.a.shape))),
                      std::vector<float>(static_cast<std::size_t>(shape_numel(d.b.shape)))};
      reader.read(nn::peft_tensor_name(cfg, d.a.name), d.a.shape, a.a.data());
      reader.read(nn::peft_tensor_name(cfg, d.b.name), d.b.shape, a.b.data());
      check_finite(a.a.data(), shape_numel(d.a.shape), d.a.name, tensor_file);
      check_finite(a.b.data(), shape_numel(d.b.shape), d.b.name, tensor_file);
      out.adapters.push_back(std::move(a));
    }
  }
  return out;
}

}  // namespace trident::ckpt
