// `trident eval`: validation loss and perplexity of a checkpoint (fp32 or quantized) on a token
// shard, through the inference path (infer/decode_model.h: the packed kernels for a quantized
// one). The shard is cut into consecutive windows of --seq-len + 1 tokens; each window is one
// sequence from position 0, and every one of its --seq-len targets counts.
// LoRA: a LoRA or QLoRA run's step directory is evaluated with its adapters applied unmerged on
// its base (fp32, or packed), and --adapter DIR applies a run's adapters to the --ckpt base
// (infer/lora_apply.h).
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "cli/cli11_errors.h"
#include "cli/commands.h"
#include "core/check.h"
#include "core/timer.h"
#include "data/shard_meta.h"
#include "data/token_shard.h"
#include "infer/decode_model.h"
#include "infer/lora_apply.h"
#include "kernels/kernels.h"
#include "quant/quant_matmul.h"

namespace trident::cli {

int run_eval(int argc, char** argv) {
  CLI::App app{"Validation loss and perplexity of a checkpoint (fp32 or quantized) on a token shard", "trident eval"};
  std::string ckpt_path, shard_path, adapter_path;
  int64_t seq_len = 0, max_tokens = 0;
  int threads = 0;
  bool allow_other_base = false;
  app.add_option("--ckpt", ckpt_path, "checkpoint: fp32 (step directory or root) or from `trident quantize`")->required();
  app.add_option("--adapter", adapter_path,
                 "a LoRA/QLoRA run's checkpoint whose adapters are applied, unmerged, to the --ckpt base (a LoRA step "
                 "directory given as --ckpt applies its own)");
  app.add_flag("--allow-other-base", allow_other_base,
               "apply --adapter although its run recorded another base than --ckpt (a different base fingerprint: docs/lora.md \"Which base\")");
  app.add_option("--data", shard_path, "token shard (e.g. data/janeausten_val.bin)")->required();
  app.add_option("--seq-len", seq_len, "tokens per window; 0 = min(256, n_positions)")->capture_default_str()->check(number_above(0, true));
  app.add_option("--max-tokens", max_tokens, "score at most this many targets from the start; 0 = the whole shard")
      ->capture_default_str()->check(number_above(0, true));
  add_threads_option(app, threads);
  if (const std::optional<int> rc = parse_command_line(app, argc, argv)) return *rc;
  if (threads > 0) kernels::set_num_threads(threads);
  infer::require_decode_layer(quant::inference_config(ckpt_path).family);
  quant::QuantizedModel weights = quant::load_for_inference(ckpt_path);
  const nn::ModelConfig cfg = weights.config;
  std::optional<ckpt::LoadedAdapters> adapters = infer::adapters_for(ckpt_path, adapter_path, cfg, allow_other_base);
  const std::string format = std::string(quant::format_name(weights.format)) +
                             (weights.group > 0 ? fmt::format(" g{}", weights.group) : "");
  if (seq_len == 0) seq_len = std::min<int64_t>(256, cfg.n_positions);
  TRI_CHECK(seq_len >= 1 && seq_len <= cfg.n_positions, "--seq-len {} must be in [1, n_positions {}]", seq_len,
            cfg.n_positions);
  if (const std::optional<std::string> tok = data::shard_file_tokenizer(shard_path)) {
    data::require_same_tokenizer(ckpt_path, cfg.tokenizer, fmt::format("{} (its meta file) holds", shard_path), *tok,
                                 fmt::format("tokenize the text with `trident prepare --tokenizer {}`", cfg.tokenizer));
  }
  const data::TokenShard shard = data::TokenShard::open(shard_path, cfg.vocab_size);
  TRI_CHECK(shard.size() >= static_cast<size_t>(seq_len + 1), "{} holds {} tokens, fewer than one window of {}",
            shard_path, shard.size(), seq_len + 1);
  infer::DecodeModel model(std::move(weights), seq_len);
  std::string lora = "none";
  if (adapters) {
    lora = fmt::format("r{} {}", adapters->lora.rank, adapters->dir);
    fmt::print(stderr, "{}\n", infer::apply_adapters(model, std::move(*adapters)));
  }
  std::vector<int32_t> window(static_cast<std::size_t>(seq_len + 1));
  double loss_sum = 0.0, max_abs_logit = 0.0;  // the latter: what tolerances on the loss scale with
  int64_t scored = 0;
  const int64_t V = cfg.vocab_size;
  Stopwatch timer;
  for (size_t begin = 0; begin + static_cast<size_t>(seq_len) + 1 <= shard.size(); begin += static_cast<size_t>(seq_len)) {
    if (max_tokens > 0 && scored >= max_tokens) break;
    shard.copy(begin, window.size(), window.data());
    model.reset();
    const float* logits = model.forward(window.data(), seq_len, true);
    for (int64_t t = 0; t < seq_len; ++t) {
      const float* row = logits + t * V;
      double mx = row[0];
      for (int64_t v = 1; v < V; ++v) mx = std::max(mx, static_cast<double>(row[v]));
      for (int64_t v = 0; v < V; ++v) max_abs_logit = std::max(max_abs_logit, std::abs(static_cast<double>(row[v])));
      double sum = 0.0;
      for (int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(row[v]) - mx);
      loss_sum += std::log(sum) + mx - row[window[static_cast<std::size_t>(t + 1)]];
    }
    scored += seq_len;
  }
  const double loss = loss_sum / static_cast<double>(scored);
  fmt::print("{{\"ckpt\": \"{}\", \"format\": \"{}\", \"kernel\": \"{}\", \"tokens\": {}, \"seq_len\": {}, "
             "\"val_loss\": {:.8f}, \"perplexity\": {:.4f}, \"max_abs_logit\": {:.4f}, \"lora\": \"{}\", \"seconds\": {:.1f}}}\n",
             ckpt_path, format, quant::kernel_path_name(model.weights().format), scored, seq_len, loss,
             std::exp(loss), max_abs_logit, lora, timer.seconds());
  return 0;
}

}  // namespace trident::cli
