// GPT-2's pre-tokenizer: splits text into the pieces BPE then works on, matching the regex
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// written out by hand over UTF-8 bytes (no regex engine). \s is Unicode White_Space, as in
// Python's `regex` module and tiktoken. Bytes that are not valid UTF-8 are single characters of
// the "other" class, so every byte string splits into pieces that concatenate back to it.
#pragma once

#include <cstddef>
#include <string_view>
#include <vector>

namespace trident::data {

// End (exclusive) of the piece that starts at text[pos]; pos < text.size().
size_t pretoken_end(std::string_view text, size_t pos);

// All pieces of text, in order; they concatenate to text.
std::vector<std::string_view> pretokenize(std::string_view text);

}  // namespace trident::data
