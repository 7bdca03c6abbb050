// `trident generate`: loads a checkpoint (any layout wrote it; it is layout-free; fp32 or from
// `trident quantize`) into the single-process inference model with a KV cache
// (infer/decode_model.h: the prompt is fed once, then one token per step) and samples text (nn/sampling.h: temperature 0 is greedy and
// deterministic; a seed reproduces a sample). A LoRA/QLoRA step directory as --ckpt, or --adapter
// DIR on a base, runs with the adapters applied unmerged (infer/lora_apply.h).
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <span>
#include <vector>

#include "cli/cli11_errors.h"
#include "cli/commands.h"
#include "ckpt/checkpoint.h"
#include "core/check.h"
#include "data/shard_meta.h"
#include "data/tokenizer.h"
#include "kernels/kernels.h"
#include "infer/decode_model.h"
#include "infer/lora_apply.h"
#include "quant/quantized_model.h"
#include "nn/sampling.h"
#include "train/memory_check.h"

namespace trident::cli {


int run_generate(int argc, char** argv) {
  CLI::App app{"Generate text from a checkpoint (a run directory with `latest`, a step directory, "
               "a quantized one, or a Hugging Face GPT-2, Llama or Mixtral directory with safetensors + config.json)",
               "trident generate"};
  std::string ckpt_path, adapter_path, prompt = "\n", tokenizer_spec;
  int max_new_tokens = 100, threads = 0;
  bool print_ids = false, allow_other_base = false;
  nn::SamplingOptions sampling;
  app.add_option("--ckpt", ckpt_path, "checkpoint directory (a LoRA/QLoRA step directory: with its adapters)")->required();
  app.add_option("--adapter", adapter_path,
                 "a LoRA/QLoRA run's checkpoint whose adapters are applied, unmerged, to the --ckpt base");
  app.add_flag("--allow-other-base", allow_other_base,
               "apply --adapter although its run recorded another base than --ckpt (a different base fingerprint: docs/lora.md \"Which base\")");
  app.add_option("--prompt", prompt, "text to continue (default: empty, which starts from <|endoftext|>)");
  app.add_option("--max-new-tokens", max_new_tokens, "tokens to generate")->capture_default_str()->check(number_above(0, false));
  app.add_option("--temperature", sampling.temperature, "sampling temperature; 0 = greedy (deterministic)")->capture_default_str()->check(number_above(0, true));
  app.add_option("--top-k", sampling.top_k, "sample among the k most likely tokens; 0 = all")->capture_default_str()->check(number_above(0, true));
  app.add_option("--repetition-penalty", sampling.repetition_penalty,
                 "divide the (positive) logits of tokens already in the text by this, as Hugging "
                 "Face does; 1 = off, 1.2-1.5 keeps greedy text from looping")
      ->capture_default_str()->check(number_above(0, false));
  app.add_option("--seed", sampling.seed, "sampling seed")->capture_default_str();
  app.add_option("--tokenizer", tokenizer_spec,
                 "the tokenizer the model was trained with: gpt2, cl100k, or a folder holding its files "
                 "(default: the one its config.json records, trident_tokenizer; else gpt2)");
  add_threads_option(app, threads);
  app.add_flag("--print-ids", print_ids, "also print the prompt's and the generated token ids on stderr");
  if (const std::optional<int> rc = parse_command_line(app, argc, argv)) return *rc;
  if (threads > 0) kernels::set_num_threads(threads);

  // Refuse absurd shapes before loading: the weights are held once, 4 bytes a parameter at most.
  const nn::ModelConfig cfg = quant::inference_config(ckpt_path);
  infer::require_decode_layer(cfg.family);
  if (const auto avail = train::available_memory_bytes()) {
    const double need = 4.0 * static_cast<double>(cfg.num_parameters());
    TRI_CHECK(need <= *avail,
              "the model in {} ({}) needs at least {} (4-byte weights), but only {} is available; this "
              "machine cannot load it", ckpt_path, cfg.describe(), format_bytes(need), format_bytes(*avail));
  }
  // Adapters are checked against the base before the weights are read (a mismatch fails fast).
  std::optional<ckpt::LoadedAdapters> adapters = infer::adapters_for(ckpt_path, adapter_path, cfg, allow_other_base);
  const std::unique_ptr<data::Tokenizer> tokenizer_ptr =
      data::load_tokenizer(!tokenizer_spec.empty() ? tokenizer_spec : !cfg.tokenizer.empty() ? cfg.tokenizer : "gpt2");
  data::Tokenizer& tokenizer = *tokenizer_ptr;
  // Another vocabulary would decode the model's ids as other text without any error.
  data::require_same_tokenizer(ckpt_path, cfg.tokenizer, fmt::format("--tokenizer {} makes", tokenizer_spec),
                               tokenizer.name(), "drop --tokenizer to use the checkpoint's");
  const std::string tok_name = tokenizer.name() == "gpt2" ? "GPT-2" : tokenizer.name();
  TRI_CHECK(cfg.vocab_size <= tokenizer.vocab_size(),
            "the model's vocabulary ({}) is larger than the tokenizer's ({}): this checkpoint was "
            "not trained on {} tokens; pass the tokenizer it was trained with (--tokenizer gpt2|cl100k|DIR)",
            cfg.vocab_size, tokenizer.vocab_size(), tok_name);
  infer::DecodeModel model(quant::load_for_inference(ckpt_path));
  if (adapters) fmt::print(stderr, "{}\n", infer::apply_adapters(model, std::move(*adapters)));

  std::vector<int32_t> tokens = tokenizer.encode(prompt);
  if (tokens.empty()) {
    TRI_CHECK(tokenizer.end_of_text() < cfg.vocab_size,
              "the prompt is empty and the model's vocabulary ({} tokens) has no {} "
              "<|endoftext|> (id {}) to start from; pass a non-empty --prompt",
              cfg.vocab_size, tok_name, tokenizer.end_of_text());
    tokens.push_back(tokenizer.end_of_text());
  }
  // A model with a smaller vocabulary (a test model, or one trained on remapped ids) has no
  // embedding row for larger GPT-2 ids: reading one would be out of bounds.
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    TRI_CHECK(tokens[i] >= 0 && tokens[i] < cfg.vocab_size,
              "the prompt's token {} ('{}', {} id {}) is outside the model's vocabulary of {} "
              "tokens (ids 0..{}); this model was not trained on full {} tokens, so use a prompt "
              "whose tokens all have ids below {}",
              i, tokenizer.token_bytes(tokens[i]).value_or("?"), tok_name, tokens[i], cfg.vocab_size,
              cfg.vocab_size - 1, tok_name, cfg.vocab_size);
  }
  const std::size_t prompt_tokens = tokens.size();
  fmt::print("{}", prompt);
  std::fflush(stdout);
  const float* logits = nullptr;
  auto refill = [&] {  // the last n_positions tokens (all the position table holds), from position 0
    const int64_t T = std::min<int64_t>(static_cast<int64_t>(tokens.size()), cfg.n_positions);
    model.reset();
    logits = model.forward(tokens.data() + (static_cast<int64_t>(tokens.size()) - T), T);
  };
  refill();
  for (int i = 0; i < max_new_tokens; ++i) {
    const int32_t next = nn::sample_token(std::span<const float>(logits, static_cast<std::size_t>(cfg.vocab_size)),
                                          tokens, sampling, tokens.size());
    tokens.push_back(next);
    // An id no token has (a gap of the vocabulary) prints nothing; --print-ids still shows it.
    const std::string bytes = tokenizer.token_bytes(next).value_or("");
    std::fwrite(bytes.data(), 1, bytes.size(), stdout);
    std::fflush(stdout);
    if (i + 1 == max_new_tokens) break;
    // A full cache slides: the window is recomputed, as a model without a cache would see it.
    if (model.position() == model.capacity()) {
      refill();
    } else {
      logits = model.forward(&next, 1);
    }
  }
  fmt::print("\n");
  if (print_ids) {
    const std::span<const int32_t> all(tokens);
    fmt::print(stderr, "prompt ids: {}\ngenerated ids: {}\n", fmt::join(all.first(prompt_tokens), " "),
               fmt::join(all.subspan(prompt_tokens), " "));
  }
  return 0;
}

}  // namespace trident::cli
