// The model's shape: GPT-2 hyperparameters, the named presets, validation and parameter count.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace trident::nn {

struct GPTConfig {
  int n_layer = 12;
  int n_head = 12;
  int n_embd = 768;
  int n_positions = 1024;  // longest sequence the position table holds
  int vocab_size = 50257;  // real tokens; the embedding may be padded (below)
  // The embedding/LM-head rows are padded up to a multiple of this (and of the tensor-parallel
  // size) for fast matmuls; padded logits are masked out, so the loss never changes.
  int vocab_pad_multiple = 64;

  int head_size() const { return n_embd / n_head; }
  // vocab_size rounded up to a multiple of vocab_pad_multiple * tp.
  int64_t padded_vocab(int tp = 1) const;
  // Parameters of the logical (unpadded, Hugging Face) model, the tied head counted once.
  int64_t num_parameters() const;
  // Throws trident::Error naming the first bad field and what to do.
  void validate() const;
  std::string describe() const;  // "n_layer=12 n_head=12 n_embd=768 ..."
};

// "tiny" (tests), "small" (~30M, learns in minutes on 2 cores), "gpt2" (124M), "gpt2-medium"
// (355M). Throws trident::Error listing the known presets for any other name.
GPTConfig gpt_preset(std::string_view name);
std::vector<std::string> gpt_preset_names();

}  // namespace trident::nn
