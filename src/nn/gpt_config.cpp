// Presets and validation of the model shape.
#include "nn/gpt_config.h"

#include <fmt/format.h>

#include "core/check.h"

namespace trident::nn {

int64_t GPTConfig::padded_vocab(int tp) const {
  const int64_t multiple = static_cast<int64_t>(vocab_pad_multiple) * tp;
  return (vocab_size + multiple - 1) / multiple * multiple;
}

int64_t GPTConfig::num_parameters() const {
  const int64_t C = n_embd, L = n_layer;
  const int64_t embeddings = static_cast<int64_t>(vocab_size) * C + static_cast<int64_t>(n_positions) * C;
  const int64_t per_block = 2 * C            // ln_1
                            + C * 3 * C + 3 * C  // attn.c_attn
                            + C * C + C          // attn.c_proj
                            + 2 * C              // ln_2
                            + C * 4 * C + 4 * C  // mlp.c_fc
                            + 4 * C * C + C;     // mlp.c_proj
  return embeddings + L * per_block + 2 * C;    // + ln_f
}

void GPTConfig::validate() const {
  TRI_CHECK(n_layer > 0, "n_layer must be positive, got {}", n_layer);
  TRI_CHECK(n_head > 0, "n_head must be positive, got {}", n_head);
  TRI_CHECK(n_embd > 0, "n_embd must be positive, got {}", n_embd);
  TRI_CHECK(n_positions > 0, "n_positions (maximum sequence length) must be positive, got {}",
            n_positions);
  TRI_CHECK(vocab_size > 0, "vocab_size must be positive, got {}", vocab_size);
  TRI_CHECK(vocab_pad_multiple > 0, "vocab_pad_multiple must be positive, got {}",
            vocab_pad_multiple);
  TRI_CHECK(n_embd % n_head == 0,
            "n_embd ({}) must be divisible by n_head ({}): each head gets n_embd / n_head "
            "channels; choose e.g. n_head = {}",
            n_embd, n_head, n_embd % 64 == 0 ? n_embd / 64 : 1);
}

std::string GPTConfig::describe() const {
  return fmt::format("n_layer={} n_head={} n_embd={} n_positions={} vocab_size={} ({} params)",
                     n_layer, n_head, n_embd, n_positions, vocab_size, num_parameters());
}

std::vector<std::string> gpt_preset_names() { return {"tiny", "small", "gpt2", "gpt2-medium"}; }

GPTConfig gpt_preset(std::string_view name) {
  GPTConfig c;
  if (name == "tiny") {
    // 8 layers so every pipeline layout of 8 ranks (and interleaving) has work per stage;
    // a vocabulary that is not a multiple of 64 so padding is always exercised.
    c.n_layer = 8, c.n_head = 4, c.n_embd = 32, c.n_positions = 64, c.vocab_size = 1000;
  } else if (name == "small") {
    c.n_layer = 6, c.n_head = 6, c.n_embd = 384, c.n_positions = 256, c.vocab_size = 50257;
  } else if (name == "gpt2") {
    c.n_layer = 12, c.n_head = 12, c.n_embd = 768, c.n_positions = 1024, c.vocab_size = 50257;
  } else if (name == "gpt2-medium") {
    c.n_layer = 24, c.n_head = 16, c.n_embd = 1024, c.n_positions = 1024, c.vocab_size = 50257;
  } else {
    TRI_FAIL("unknown model preset '{}'; known presets: {} (or give a config.json)", name,
             fmt::join(gpt_preset_names(), ", "));
  }
  return c;
}

}  // namespace trident::nn
