// `trident dequantize`: a quantized checkpoint (quant/quantized_model.h) back to a plain fp32
// one holding the values the quantized model computes with (quant::dequantize, the same fp32
// a QLoRA run trains on), e.g. to merge a QLoRA run's adapters (`merge-lora --base` the result)
// or to train LoRA on exactly the weights a QLoRA run sees.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <filesystem>

#include "ckpt/atomic_file.h"
#include "ckpt/base_fingerprint.h"
#include "ckpt/checkpoint.h"
#include "ckpt/checksums.h"
#include "core/crc32c.h"
#include "ckpt/safetensors.h"
#include "cli/cli11_errors.h"
#include "cli/commands.h"
#include "core/check.h"
#include "quant/quantized_model.h"

namespace trident::cli {

int run_dequantize(int argc, char** argv) {
  CLI::App app{"Write a quantized checkpoint's weights back as a plain fp32 checkpoint (model.safetensors and "
               "config.json): each packed matrix as the values its kernels and QLoRA use (s q, or s q + m), "
               "every other tensor as stored.",
               "trident dequantize"};
  std::string ckpt_path, out_dir;
  app.add_option("--ckpt", ckpt_path, "a `trident quantize` output (or a QLoRA run's step directory)")->required();
  app.add_option("--out", out_dir, "directory to write (must not exist or be empty)")->required();
  if (const std::optional<int> rc = parse_command_line(app, argc, argv)) return *rc;
  const std::string dir = ckpt::resolve_checkpoint(ckpt_path);
  TRI_CHECK(quant::is_quantized_checkpoint(dir), "--ckpt {} is not a quantized checkpoint (its config.json has no "
            "{}); it is fp32 already", dir, quant::kQuantizationKey);
  ckpt::StagedDirectory out = ckpt::stage_new_output_dir(out_dir);
  const quant::QuantizedModel q = quant::load_quantized(dir);
  ckpt::SafetensorsWriter writer;
  std::vector<std::vector<float>> keep;
  for (const nn::ParamDecl& d : quant::inference_tensors(q.config)) {
    if (!quant::is_quantizable(d, q.config)) {
      writer.add_tensor(d.name, d.shape, q.tensor(d.name).data());
      continue;
    }
    keep.emplace_back(static_cast<std::size_t>(shape_numel(d.shape)));
    quant::dequantize(q.matrix(d.name), keep.back().data(), d.in_out);
    writer.add_tensor(d.name, d.shape, keep.back().data());
  }
  const std::uint32_t crc = writer.write(out.path() + "/" + ckpt::kModelFile);
  // The same base as the quantized one and its fp32 origin (ckpt/base_fingerprint.h): its values
  // are what a QLoRA run on --ckpt trained on, so that run's adapters merge into this output.
  nlohmann::json config = nn::model_config_to_hf_json(q.config);
  if (!q.base_fingerprint.empty()) config[ckpt::kBaseFingerprintKey] = q.base_fingerprint;
  config[ckpt::kOutputChecksumsKey] = {{ckpt::kModelFile, crc32c_string(crc)}};  // ckpt/checksums.h: loads verify it
  ckpt::write_file_atomic(out.path() + "/" + ckpt::kConfigFile, config.dump(2) + "\n");
  ckpt::commit_new_output_dir(out);
  fmt::print("dequantized {} ({}{}) -> {}: {} matrices as fp32\n", dir, quant::format_name(q.format),
             q.group > 0 ? fmt::format(" g{}", q.group) : "", out_dir, q.matrices.size());
  return 0;
}

}  // namespace trident::cli
