// tiktoken-style byte-level BPE (OpenAI's cl100k_base): a table of token bytes -> rank, where
// the rank is also the token id and the merge priority; a piece of the pre-tokenizer is one
// token when its bytes are a token, else its bytes are merged pairwise, lowest-ranked pair
// first (leftmost on ties), exactly as tiktoken's byte_pair_merge. Loads the rank file that the
// npm package js-tiktoken ships (dist/ranks/cl100k_base.js: a JSON object with pat_str,
// special_tokens and the ranks as base64 runs), checking that its pattern is the one
// pretokenizer_cl100k.h implements. Special tokens are ids only: text is always ordinary text.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace trident::data {

class TiktokenTokenizer {
 public:
  // Throws trident::Error naming the file and the problem (missing, not the expected module,
  // an unsupported pattern, malformed ranks).
  static TiktokenTokenizer from_js_ranks(const std::string& path);

  std::vector<int32_t> encode(std::string_view text);
  // As BpeTokenizer::encode_chunk: encodes from pos for at least min_bytes bytes, stopping at
  // a piece boundary, and returns where it stopped; chunk by chunk equals encode(text).
  size_t encode_chunk(std::string_view text, size_t pos, size_t min_bytes, std::vector<int32_t>* out);
  // Throws on ids outside the vocabulary or in its unused gaps.
  std::string decode(std::span<const int32_t> ids) const;

  // One past the largest id, special tokens included (cl100k: 100277).
  int32_t vocab_size() const { return static_cast<int32_t>(id_to_bytes_.size()); }
  int32_t end_of_text() const { return end_of_text_; }
  // The bytes of one id (a special token's name for special ids), nullopt in the gaps.
  std::optional<std::string> token_bytes(int32_t id) const;
  size_t rank_count() const { return ranks_.size(); }

 private:
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  static constexpr int32_t kNoRank = INT32_MAX;
  int32_t rank_of(std::string_view bytes) const;
  void bpe(std::string_view piece, std::vector<int32_t>* out);

  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> ranks_;
  std::vector<std::string> id_to_bytes_;  // empty for ids no token uses
  std::vector<bool> is_special_;
  int32_t end_of_text_ = -1;
  std::vector<size_t> parts_;        // scratch: piece boundaries during a merge
  std::vector<int32_t> pair_ranks_;  // scratch: rank of parts i..i+2
};

}  // namespace trident::data
