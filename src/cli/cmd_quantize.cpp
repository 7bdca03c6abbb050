// `trident quantize`: reads an fp32 checkpoint and writes a weight-only round-to-nearest
// quantized one (quant/quantized_model.h: which tensors, the format, the files).
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "ckpt/checkpoint.h"
#include "cli/cli11_errors.h"
#include "cli/commands.h"
#include "core/check.h"
#include "kernels/kernels.h"
#include "infer/decode_layer.h"
#include "quant/quantized_model.h"

namespace trident::cli {

int run_quantize(int argc, char** argv) {
  CLI::App app{"Quantize a checkpoint's layer matrices (weight-only, round to nearest): int8 symmetric "
               "per output channel, or q4 asymmetric per group of inputs. Embeddings (and the tied "
               "LM head), norms and biases stay fp32. The result is read by `generate` and `eval`.",
               "trident quantize"};
  std::string ckpt_path, out_dir, format_text;
  int group = 64, threads = 0;
  app.add_option("--ckpt", ckpt_path, "fp32 checkpoint: a step directory or a root holding 'latest'")->required();
  app.add_option("--out", out_dir, "directory to write (must not exist or be empty)")->required();
  app.add_option("--format", format_text, "int8 | q4")->required();
  app.add_option("--group-size", group, "q4: inputs per group (32, 64 or 128; must divide every row)")
      ->capture_default_str();
  app.add_option("--threads", threads, "threads; 0 = OpenMP's default")->capture_default_str();
  use_trident_error_format(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (threads > 0) kernels::set_num_threads(threads);
  const quant::Format format = quant::parse_format(format_text);
  if (format == quant::Format::kQ4) {
    TRI_CHECK(quant::valid_group_size(group), "--group-size {} is not supported; use 32, 64 or 128", group);
  }
  TRI_CHECK(!quant::is_quantized_checkpoint(ckpt_path),
            "'{}' is already quantized; quantize the fp32 checkpoint it was made from (re-quantizing "
            "would compound the rounding)", ckpt_path);
  const ckpt::LoadedCheckpoint ck = ckpt::load_checkpoint(ckpt_path);
  infer::require_decode_layer(ck.config.family);  // a quantized checkpoint is only for decode
  const quant::QuantizedModel m = quant::build_quantized_model(
      ck.config,
      [&](const nn::ParamDecl& d, float* dst) {
        ck.read_param(d.name, d.shape, dst);
        ckpt::check_finite(dst, shape_numel(d.shape), ck.model_prefix + d.name, ck.model.file_of(ck.model_prefix + d.name));
      },
      format, group);
  quant::save_quantized(m, out_dir);
  fmt::print("quantized {} -> {}: format {}{}, {} matrices ({:.1f} MB packed), {} tensors kept fp32 ({:.1f} MB)\n",
             ck.path, out_dir, quant::format_name(format),
             format == quant::Format::kQ4 ? fmt::format(" (group {})", group) : "", m.matrices.size(),
             static_cast<double>(m.matrix_bytes()) / 1e6, m.tensors.size(), static_cast<double>(m.tensor_bytes()) / 1e6);
  return 0;
}

}  // namespace trident::cli
