// Presets and validation of the model shape.
#include "nn/gpt_config.h"

#include <fmt/format.h>

#include <limits>

#include "core/check.h"

namespace trident::nn {

int64_t GPTConfig::padded_vocab(int tp) const {
  const int64_t multiple = static_cast<int64_t>(vocab_pad_multiple) * tp;
  return (vocab_size + multiple - 1) / multiple * multiple;
}

namespace {
// a * b and a + b in 64 bits, throwing instead of wrapping: a shape typed by hand (or read from
// a config.json) may be large enough to overflow, and a wrapped count would size allocations.
[[noreturn]] void fail_too_many_parameters(const GPTConfig& c) {
  TRI_FAIL("the model (n_layer={} n_embd={} vocab_size={} n_positions={}) has more than 2^63 "
           "parameters; no machine can hold it: choose a smaller shape",
           c.n_layer, c.n_embd, c.vocab_size, c.n_positions);
}
int64_t checked_mul(int64_t a, int64_t b, const GPTConfig& c) {
  int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) fail_too_many_parameters(c);
  return r;
}
int64_t checked_add(int64_t a, int64_t b, const GPTConfig& c) {
  int64_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) fail_too_many_parameters(c);
  return r;
}
}  // namespace

int64_t GPTConfig::num_parameters() const {
  const GPTConfig& c = *this;
  const int64_t C = n_embd, L = n_layer;
  // ln_1, attn.c_attn (C x 3C + 3C), attn.c_proj (C x C + C), ln_2, mlp.c_fc (C x 4C + 4C),
  // mlp.c_proj (4C x C + C): 12 C^2 + 13 C.
  const int64_t per_block = checked_add(checked_mul(12, checked_mul(C, C, c), c), checked_mul(13, C, c), c);
  const int64_t embeddings =
      checked_mul(checked_add(vocab_size, n_positions, c), C, c);  // wte + wpe
  return checked_add(checked_add(embeddings, checked_mul(L, per_block, c), c), checked_mul(2, C, c), c);  // + ln_f
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
  // Widths such as the MLP's 4 * n_embd are computed as int, and the parameter count must fit
  // 64 bits (checked, throws).
  TRI_CHECK(n_embd <= std::numeric_limits<int>::max() / 4,
            "n_embd {} is too large: the MLP's 4 * n_embd must fit a 32-bit int (n_embd at most {})",
            n_embd, std::numeric_limits<int>::max() / 4);
  (void)num_parameters();
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
