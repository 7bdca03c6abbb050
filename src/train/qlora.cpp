// QLoRA sources and loading (see qlora.h).
#include "train/qlora.h"

#include <filesystem>
#include <fstream>

#include "core/check.h"
#include "nn/lora_checkpoint.h"

namespace trident::train {

namespace fs = std::filesystem;

bool is_quantized_source(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return false;
  return quant::is_quantized_checkpoint(ckpt::resolve_checkpoint(path));
}

ckpt::LoadedCheckpoint open_quantized_source(const std::string& path) {
  const std::string dir = ckpt::resolve_checkpoint(path);
  nn::ModelConfig config = quant::inference_config(dir);
  if (const std::string adapter = dir + "/" + ckpt::kAdapterConfigFile; fs::is_regular_file(adapter)) {
    nlohmann::json j;
    std::ifstream(adapter) >> j;
    config.lora = nn::lora_config_from_adapter_json(config, j, adapter);
  }
  ckpt::LoadedCheckpoint ck{dir, config, ckpt::SafetensorsSet(dir), std::nullopt, nullptr, -1, ""};
  if (const std::string opt = dir + "/" + ckpt::kOptimizerFile; fs::is_regular_file(opt)) ck.optimizer.emplace(opt);
  if (const std::string t = dir + "/" + ckpt::kTridentFile; fs::is_regular_file(t)) {
    std::ifstream(t) >> ck.trident;
    if (ck.trident.is_object() && ck.trident.contains("step") && ck.trident["step"].is_number_integer()) {
      ck.step = ck.trident["step"].get<std::int64_t>();
    }
  }
  return ck;
}

nn::ModelConfig with_packed_base(nn::ModelConfig c, quant::PackedFormat q, const std::string& source) {
  TRI_CHECK(c.lora.enabled(),
            "{} is a quantized checkpoint ({}): `train` takes it only as the frozen base of QLoRA, which needs "
            "--lora-rank r and --lora-targets (a full fine-tune would update rounded weights; train the fp32 "
            "checkpoint it was quantized from instead)", source, quant::format_name(q.format));
  c.packed_base_format = std::string(quant::format_name(q.format));
  c.packed_base_group = q.group;
  c.validate();
  return c;
}

void load_packed_base(parallel::Engine& engine, const quant::QuantizedModel& q) {
  for (const nn::ParamDecl& d : quant::declared_params(q.config)) {
    if (quant::is_quantizable(d, q.config)) {
      engine.load_packed_param(d, q.matrix(d.name));
    } else {
      engine.load_param(d.name, q.tensor(d.name).data());
    }
  }
  engine.check_packed_base();
}

}  // namespace trident::train
