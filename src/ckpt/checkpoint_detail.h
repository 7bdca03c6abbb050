// Pieces of checkpoint reading shared by checkpoint.cpp, checkpoint_validate.cpp and
// checkpoint_inspect.cpp; not part of the ckpt interface (checkpoint.h is).
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ckpt/checkpoint.h"

namespace trident::ckpt::detail {

std::string join_path(const std::string& a, const std::string& b);
bool is_file(const std::string& p);
// step_NNNNNNNN -> N, or -1 when the name is not a step directory name.
std::int64_t parse_step_name(const std::string& name);
nlohmann::json read_json_file(const std::string& path);
// "a, b, c and 5 more" (the first `max` items).
std::string list_limited(const std::vector<std::string>& items, std::size_t max = 8);
// "; 2 missing: [a, b]; 1 mismatched: [c]" for the non-empty lists.
std::string problem_list(const std::vector<std::string>& missing, const std::vector<std::string>& wrong,
                         const std::vector<std::string>& extra);
// A Hugging Face buffer (e.g. rotary inv_freq, GPT-2's attn.bias) that is not a parameter.
bool ignorable_hf_tensor(const nn::ModelConfig& config, const std::string& name, const std::string& prefix);
// The directory's config.json, adapters, weights, optimizer state and trident.json, opened but
// not validated (load_checkpoint validates; `ckpt info` reports instead of failing).
LoadedCheckpoint open_checkpoint(const std::string& path);

}  // namespace trident::ckpt::detail
