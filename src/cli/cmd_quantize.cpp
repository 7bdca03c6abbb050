// `trident quantize`: reads an fp32 checkpoint and writes a weight-only quantized one
// (quant/quantized_model.h: which tensors, the format, the files), the codes chosen by round to
// nearest (--method rtn) or by GPTQ on calibration tokens (--method gptq: quant/gptq.h,
// infer/gptq_calibrate.h). Both write the same format; only quant_method differs.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "ckpt/base_fingerprint.h"
#include "ckpt/checkpoint.h"
#include "cli/cli11_errors.h"
#include "cli/commands.h"
#include "core/check.h"
#include "data/token_shard.h"
#include "infer/decode_layer.h"
#include "infer/gptq_calibrate.h"
#include "kernels/kernels.h"
#include "quant/quantized_model.h"

namespace trident::cli {

int run_quantize(int argc, char** argv) {
  CLI::App app{"Quantize a checkpoint's layer matrices (weight-only): int8 symmetric per output channel, or "
               "q4 asymmetric per group of inputs, the codes rounded to nearest (rtn) or chosen by GPTQ to "
               "keep each layer's output on calibration tokens (gptq). Embeddings (and the tied LM head), "
               "norms and biases stay fp32. The result is read by `generate` and `eval`.",
               "trident quantize"};
  std::string ckpt_path, out_dir, format_text, method = "rtn", calib_path;
  int group = 64, threads = 0;
  int64_t calib_tokens = 16384, calib_seq_len = 0;
  app.add_option("--ckpt", ckpt_path, "fp32 checkpoint: a step directory or a root holding 'latest'")->required();
  app.add_option("--out", out_dir, "directory to write (must not exist or be empty)")->required();
  app.add_option("--format", format_text, "int8 | q4")->required();
  app.add_option("--group-size", group, "q4: inputs per group (32, 64 or 128; must divide every row)")
      ->capture_default_str();
  app.add_option("--method", method, "rtn (round to nearest) | gptq (error-compensating; needs --calib)")
      ->capture_default_str();
  CLI::Option* calib_opt =
      app.add_option("--calib", calib_path, "gptq: token shard to calibrate on (training text, e.g. data/janeausten_train.bin)");
  CLI::Option* tokens_opt = app.add_option("--calib-tokens", calib_tokens, "gptq: tokens of --calib to use, from its start")
                                ->capture_default_str();
  CLI::Option* len_opt = app.add_option("--calib-seq-len", calib_seq_len,
                                        "gptq: tokens per calibration window (each from position 0); 0 = min(256, n_positions)")
                             ->capture_default_str();
  add_threads_option(app, threads);
  if (const std::optional<int> rc = parse_command_line(app, argc, argv)) return *rc;
  if (threads > 0) kernels::set_num_threads(threads);
  const quant::Format format = quant::parse_format(format_text);
  TRI_CHECK(method == "rtn" || method == "gptq", "unknown --method '{}'; choose rtn (round to nearest) or gptq "
            "(error-compensating, with --calib)", method);
  const bool gptq = method == "gptq";
  TRI_CHECK(gptq || (calib_opt->count() == 0 && tokens_opt->count() == 0 && len_opt->count() == 0),
            "--calib, --calib-tokens and --calib-seq-len are for --method gptq; round to nearest reads no calibration data");
  TRI_CHECK(!gptq || !calib_path.empty(), "--method gptq needs --calib FILE.bin: a token shard of text like the "
            "model's training data (e.g. data/janeausten_train.bin), on which each layer's output is kept");
  if (format == quant::Format::kQ4) {
    TRI_CHECK(quant::valid_group_size(group), "--group-size {} is not supported; use 32, 64 or 128", group);
  }
  TRI_CHECK(!quant::is_quantized_checkpoint(ckpt_path),
            "'{}' is already quantized; quantize the fp32 checkpoint it was made from (re-quantizing "
            "would compound the rounding)", ckpt_path);
  // Every weight is read, so the checksums come from those reads (one pass over each file), checked
  // before anything is calibrated or written.
  const ckpt::LoadedCheckpoint ck = ckpt::load_checkpoint(ckpt_path, ckpt::ChecksumCheck::kAfterReads);
  infer::require_decode_layer(ck.config.family);  // a quantized checkpoint is only for decode
  const auto read = [&](const nn::ParamDecl& d, float* dst) {
    ck.read_param(d.name, d.shape, dst);
    ckpt::check_finite(dst, shape_numel(d.shape), ck.model_prefix + d.name, ck.model.file_of(ck.model_prefix + d.name));
  };
  quant::QuantizedModel m;
  if (!gptq) {
    ck.load_then_verify([&] { m = quant::build_quantized_model(ck.config, read, format, group); });
  } else {
    const nn::ModelConfig& c = ck.config;
    // An expert sees only the tokens routed to it, so its H has other rows than its layer's
    // (infer/gptq_calibrate.h checks every matrix saw every row): not supported yet.
    TRI_CHECK(c.family != nn::Family::kMixtral, "--method gptq does not support the mixtral family yet (its experts "
              "see only their routed tokens); use --method rtn");
    const int64_t T = calib_seq_len == 0 ? std::min<int64_t>(256, c.n_positions) : calib_seq_len;
    TRI_CHECK(T >= 1 && T <= c.n_positions, "--calib-seq-len {} must be in [1, n_positions {}]", T, c.n_positions);
    TRI_CHECK(calib_tokens >= T, "--calib-tokens {} is less than one window of --calib-seq-len {}", calib_tokens, T);
    const data::TokenShard shard = data::TokenShard::open(calib_path, c.vocab_size);
    TRI_CHECK(shard.size() >= static_cast<size_t>(calib_tokens), "calibration shard {} holds {} tokens, fewer than "
              "--calib-tokens {}; lower --calib-tokens or give a longer shard", calib_path, shard.size(), calib_tokens);
    std::vector<int32_t> tokens(static_cast<std::size_t>(calib_tokens / T * T));
    shard.copy(0, tokens.size(), tokens.data());
    // Everything that can fail on the format fails before the calibration: the group size per matrix.
    quant::QuantizedModel weights;
    ck.load_then_verify([&] {
      if (format == quant::Format::kQ4) (void)quant::build_quantized_model(c, read, format, group);
      weights = quant::build_quantized_model(c, read, quant::Format::kFp32, 0);
    });
    fmt::print(stderr, "gptq: {} windows of {} tokens from {}, {} layers\n", tokens.size() / static_cast<std::size_t>(T),
               T, calib_path, c.n_layer);
    infer::GptqResult r = infer::gptq_quantize_model(
        std::move(weights), tokens, T, format, group, quant::GptqOptions{},
        [](const std::string& line) { fmt::print(stderr, "{}\n", line); });
    for (const infer::GptqMatrixReport& x : r.matrices) {
      const double e = std::max(x.energy, 1e-300);
      fmt::print("gptq matrix {} {}x{}: relative output error rtn {:.6e} gptq {:.6e} ratio {:.4f}\n", x.name, x.rows,
                 x.cols, std::sqrt(x.rtn / e), std::sqrt(x.gptq / e), x.rtn > 0.0 ? std::sqrt(x.gptq / x.rtn) : 1.0);
    }
    m = std::move(r.model);
  }
  // The base's identity travels with its quantized versions, so LoRA adapters of the fp32 base and
  // QLoRA adapters of this output apply to either (ckpt/base_fingerprint.h).
  m.base_fingerprint = ckpt::base_fingerprint(ck);
  quant::save_quantized(m, out_dir);
  fmt::print("quantized {} -> {}: method {}, format {}{}, {} matrices ({:.1f} MB packed), {} tensors kept fp32 ({:.1f} MB)\n",
             ck.path, out_dir, m.method, quant::format_name(format),
             format == quant::Format::kQ4 ? fmt::format(" (group {})", group) : "", m.matrices.size(),
             static_cast<double>(m.matrix_bytes()) / 1e6, m.tensors.size(), static_cast<double>(m.tensor_bytes()) / 1e6);
  return 0;
}

}  // namespace trident::cli
