// Presets, generic validation and description of a model shape; the family-specific parts are
// the architecture's (nn/architecture.h).
#include "nn/model_config.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <limits>

#include "core/check.h"
#include "nn/architecture.h"

namespace trident::nn {

int64_t ModelConfig::padded_vocab(int tp) const {
  const int64_t multiple = static_cast<int64_t>(vocab_pad_multiple) * tp;
  return (vocab_size + multiple - 1) / multiple * multiple;
}

void ModelConfig::validate() const {
  TRI_CHECK(n_layer > 0, "n_layer must be positive, got {}", n_layer);
  TRI_CHECK(n_head > 0, "n_head must be positive, got {}", n_head);
  TRI_CHECK(n_kv_head >= 0, "n_kv_head must be positive (or 0: as many as n_head), got {}", n_kv_head);
  TRI_CHECK(n_embd > 0, "n_embd must be positive, got {}", n_embd);
  TRI_CHECK(n_inner >= 0, "n_inner (the MLP width) must be positive (or 0: the family's default), got {}",
            n_inner);
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
  TRI_CHECK(n_embd % n_head == 0,
            "n_embd ({}) must be divisible by n_head ({}): each head gets n_embd / n_head "
            "channels; choose e.g. n_head = {}",
            n_embd, n_head, n_embd % 64 == 0 ? n_embd / 64 : 1);
  if (!is_moe()) {
    TRI_CHECK(first_k_dense == 0 && n_shared_experts == 0,
              "first_k_dense_replace {} / n_shared_experts {} shape a mixture-of-experts model's layers, but this "
              "{} model has no experts: use a mixtral model (or set both to 0)",
              first_k_dense, n_shared_experts, family_name(family));
    TRI_CHECK(moe_inner == 0 && scoring == RouterScoring::kSoftmax && n_group == 1 && routed_scaling_factor == 1.0,
              "moe_intermediate_size / scoring_func / n_group / routed_scaling_factor describe a mixture of experts, "
              "but this {} model has no experts: use a mixtral model (or drop them)",
              family_name(family));
  }
  architecture(family).validate(*this);
  validate_lora(*this);
  (void)num_parameters();
}

std::string ModelConfig::describe() const {
  std::string s = fmt::format("{} n_layer={} n_head={}", family_name(family), n_layer, n_head);
  if (kv_heads() != n_head) s += fmt::format(" n_kv_head={}", kv_heads());
  s += fmt::format(" n_embd={}", n_embd);
  if (n_inner > 0) s += fmt::format(" n_inner={}", n_inner);
  s += fmt::format(" n_positions={} vocab_size={}", n_positions, vocab_size);
  if (family != Family::kGpt2) s += tie_word_embeddings ? " tied" : " untied";
  if (is_moe()) s += fmt::format(" experts={} top_k={}", n_experts, n_experts_per_tok);
  if (first_k_dense > 0) s += fmt::format(" first_k_dense={}", first_k_dense);
  if (n_shared_experts > 0) s += fmt::format(" shared_experts={}", n_shared_experts);
  if (is_moe() && moe_inner > 0) s += fmt::format(" moe_inner={}", moe_inner);
  if (is_moe() && scoring != RouterScoring::kSoftmax) s += fmt::format(" scoring={}", scoring_name(scoring));
  if (is_moe() && n_group > 1) s += fmt::format(" groups={}/{}", topk_group, n_group);
  if (is_moe() && routed_scaling_factor != 1.0) s += fmt::format(" routed_scaling={:g}", routed_scaling_factor);
  if (lora.enabled()) s += fmt::format(" lora r={} alpha={:g} targets={}", lora.rank, lora.alpha, fmt::join(lora.targets, ","));
  return s + fmt::format(" ({} params)", num_parameters());
}

std::vector<std::string> model_preset_names() {
  std::vector<std::string> names;
  for (const Architecture* a : all_architectures()) {
    for (std::string& n : a->preset_names()) names.push_back(std::move(n));
  }
  return names;
}

ModelConfig model_preset(std::string_view name) {
  for (const Architecture* a : all_architectures()) {
    for (const std::string& n : a->preset_names()) {
      if (n == name) return a->preset(name);
    }
  }
  TRI_FAIL("unknown model preset '{}'; known presets: {} (or give a config.json)", name,
           fmt::join(model_preset_names(), ", "));
}

void check_sequence_length(const ModelConfig& config, int64_t seq_len) {
  TRI_CHECK(seq_len >= 1 && seq_len <= config.n_positions,
            "--seq-len {} must be between 1 and the model's n_positions {}: lower --seq-len, or give the model "
            "more positions (--n-positions; for a loaded checkpoint the table's size is fixed)", seq_len,
            config.n_positions);
}

}  // namespace trident::nn
