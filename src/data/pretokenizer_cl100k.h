// The pre-tokenizer of OpenAI's cl100k_base (GPT-3.5/4; Llama 3 uses the same pattern):
//   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
//   \s*[\r\n]+|\s+(?!\S)|\s+
// written out by hand over UTF-8 bytes like GPT-2's (pretokenizer.h), with the same character
// classes: \s is Unicode White_Space as in tiktoken's Rust regex (JavaScript's \s differs on
// U+0085, which it excludes, and U+FEFF, which it includes). The contractions match ASCII case
// only, as js-tiktoken spells the pattern out ('s|'S|...).
#pragma once

#include <cstddef>
#include <string_view>

namespace trident::data {

// End (exclusive) of the cl100k piece that starts at text[pos]; pos < text.size().
size_t cl100k_pretoken_end(std::string_view text, size_t pos);

}  // namespace trident::data
