// GPT-2's byte-level BPE tokenizer: reads OpenAI's encoder.json (token -> id) and vocab.bpe
// (merges in rank order), encodes bytes to ids exactly as GPT-2 does and decodes ids back to
// bytes. Pre-tokenisation lives in pretokenizer.h, the byte alphabet in byte_unicode.h.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace trident::data {

class BpeTokenizer {
 public:
  static constexpr int32_t kEndOfText = 50256;  // <|endoftext|>, GPT-2's document separator
  static constexpr const char* kDefaultAssetDir = "data/assets/gpt2";

  // Loads the two files; throws trident::Error naming the file and the problem (missing,
  // unparsable, a merge whose parts are not tokens, ...).
  static BpeTokenizer from_files(const std::string& encoder_json, const std::string& vocab_bpe);
  // from_files(dir/encoder.json, dir/vocab.bpe); scripts/fetch_assets.sh fills the default dir.
  static BpeTokenizer from_dir(const std::string& dir = kDefaultAssetDir);

  // Encodes arbitrary bytes (UTF-8 or not) as ordinary text: "<|endoftext|>" inside text is
  // not special; callers append kEndOfText themselves. decode(encode(s)) == s for every s.
  // Not thread-safe (it fills a cache): give each thread its own copy.
  std::vector<int32_t> encode(std::string_view text);
  void encode_append(std::string_view text, std::vector<int32_t>* out);
  // Encodes text from pos (which must be 0 or a value this function returned) for at least
  // min_bytes bytes, stopping at a pre-token boundary, and returns where it stopped. Encoding a
  // text chunk by chunk this way gives exactly encode(text); used for progress reporting.
  size_t encode_chunk(std::string_view text, size_t pos, size_t min_bytes, std::vector<int32_t>* out);

  // Concatenated bytes of the tokens; throws trident::Error on an id outside [0, vocab_size).
  std::string decode(std::span<const int32_t> ids) const;

  int32_t vocab_size() const { return static_cast<int32_t>(id_to_bytes_.size()); }
  // Raw bytes of one token (id must be in range).
  std::string_view token_bytes(int32_t id) const { return id_to_bytes_[static_cast<size_t>(id)]; }
  // Id of a token given by its raw bytes, or -1.
  int32_t token_id(std::string_view bytes) const;
  size_t merge_count() const { return merges_.size(); }

 private:
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  struct Merge {
    int32_t rank;
    int32_t merged;
  };
  struct CacheEntry {
    uint32_t offset, count;  // into cache_ids_
  };
  static constexpr int32_t kNoMerge = INT32_MAX;

  Merge merge_of(int32_t left, int32_t right) const;
  // BPE of one pre-token piece, appended to out.
  void bpe(std::string_view piece, std::vector<int32_t>* out);

  std::vector<std::string> id_to_bytes_;
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> bytes_to_id_;
  int32_t byte_id_[256] = {};
  std::unordered_map<uint64_t, Merge> merges_;  // (left << 32 | right) -> rank, merged id
  // Piece -> ids, for pieces up to kMaxCachedPiece bytes; cleared when it grows too large.
  std::unordered_map<std::string, CacheEntry, StringHash, std::equal_to<>> cache_;
  std::vector<int32_t> cache_ids_;
  std::vector<int32_t> scratch_ids_;
  std::vector<Merge> scratch_merges_;
};

}  // namespace trident::data
