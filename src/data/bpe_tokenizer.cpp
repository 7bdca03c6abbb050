// GPT-2 byte-level BPE: loading encoder.json / vocab.bpe, rank-ordered merging with a piece
// cache, and decoding.
#include "data/bpe_tokenizer.h"

#include "data/assets.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/check.h"
#include "data/byte_unicode.h"
#include "data/pretokenizer.h"

namespace trident::data {
namespace {

constexpr size_t kMaxCachedPiece = 64;
constexpr size_t kMaxCacheEntries = size_t{1} << 20;

std::string read_file(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  TRI_CHECK(in.good(), "cannot open {} ({}): {}. Run scripts/fetch_assets.sh to download GPT-2's tokenizer files",
            path, what, std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

}  // namespace

BpeTokenizer BpeTokenizer::from_dir(const std::string& dir) {
  const std::string d = dir == kDefaultAssetDir ? resolve_default_asset(dir) : dir;
  return from_files(d + "/encoder.json", d + "/vocab.bpe");
}

BpeTokenizer BpeTokenizer::from_files(const std::string& encoder_json, const std::string& vocab_bpe) {
  BpeTokenizer tok;
  // encoder.json: {"token spelled in the byte alphabet": id, ...}, ids dense from 0.
  {
    const std::string text = read_file(encoder_json, "GPT-2 encoder.json");
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const std::exception& e) {
      TRI_FAIL("{} is not valid JSON ({}); delete it and run scripts/fetch_assets.sh again", encoder_json,
               e.what());
    }
    TRI_CHECK(j.is_object() && !j.empty(), "{} must be a JSON object mapping tokens to ids", encoder_json);
    tok.id_to_bytes_.assign(j.size(), std::string());
    std::vector<bool> seen(j.size(), false);
    for (const auto& [key, value] : j.items()) {
      TRI_CHECK(value.is_number_integer(), "{}: the id of token '{}' is not an integer", encoder_json, key);
      const int64_t id = value.get<int64_t>();
      TRI_CHECK(id >= 0 && id < static_cast<int64_t>(j.size()) && !seen[id],
                "{}: token '{}' has id {}, but ids must be distinct and in [0, {})", encoder_json, key, id,
                j.size());
      auto bytes = unicode_token_to_bytes(key);
      TRI_CHECK(bytes.has_value(), "{}: token '{}' uses characters outside GPT-2's byte alphabet",
                encoder_json, key);
      seen[id] = true;
      tok.id_to_bytes_[id] = *bytes;
      tok.bytes_to_id_.emplace(std::move(*bytes), static_cast<int32_t>(id));
    }
    for (int b = 0; b < 256; ++b) {
      const int32_t id = tok.token_id(std::string(1, static_cast<char>(b)));
      TRI_CHECK(id >= 0, "{}: byte {} has no token; a byte-level vocabulary needs all 256", encoder_json, b);
      tok.byte_id_[b] = id;
    }
  }
  // vocab.bpe: "#version: 0.2" then one merge "left right" per line, best (rank 0) first.
  {
    const std::string text = read_file(vocab_bpe, "GPT-2 vocab.bpe merges");
    std::istringstream in(text);
    std::string line;
    int line_no = 0;
    int32_t rank = 0;
    while (std::getline(in, line)) {
      ++line_no;
      if (line.empty() || (line_no == 1 && line.rfind("#version", 0) == 0)) continue;
      const size_t space = line.find(' ');
      TRI_CHECK(space != std::string::npos && space > 0 && space + 1 < line.size() &&
                    line.find(' ', space + 1) == std::string::npos,
                "{}:{}: expected 'left right', got '{}'", vocab_bpe, line_no, line);
      const auto left = unicode_token_to_bytes(std::string_view(line).substr(0, space));
      const auto right = unicode_token_to_bytes(std::string_view(line).substr(space + 1));
      TRI_CHECK(left && right, "{}:{}: '{}' uses characters outside GPT-2's byte alphabet", vocab_bpe,
                line_no, line);
      const int32_t l = tok.token_id(*left), r = tok.token_id(*right), m = tok.token_id(*left + *right);
      TRI_CHECK(l >= 0 && r >= 0 && m >= 0,
                "{}:{}: merge '{}' names a token missing from {}; the two files do not belong together",
                vocab_bpe, line_no, line, encoder_json);
      tok.merges_.emplace(pair_key(l, r), Merge{rank++, m});
    }
    TRI_CHECK(rank > 0, "{} holds no merges", vocab_bpe);
  }
  return tok;
}

int32_t BpeTokenizer::token_id(std::string_view bytes) const {
  const auto it = bytes_to_id_.find(bytes);
  return it == bytes_to_id_.end() ? -1 : it->second;
}

BpeTokenizer::Merge BpeTokenizer::merge_of(int32_t left, int32_t right) const {
  const auto it = merges_.find(pair_key(left, right));
  return it == merges_.end() ? Merge{kNoMerge, -1} : it->second;
}

void BpeTokenizer::bpe(std::string_view piece, std::vector<int32_t>* out) {
  if (piece.size() == 1) {
    out->push_back(byte_id_[static_cast<unsigned char>(piece[0])]);
    return;
  }
  const bool cacheable = piece.size() <= kMaxCachedPiece;
  if (cacheable) {
    const auto it = cache_.find(piece);
    if (it != cache_.end()) {
      const int32_t* ids = cache_ids_.data() + it->second.offset;
      out->insert(out->end(), ids, ids + it->second.count);
      return;
    }
  }
  // GPT-2's loop: repeatedly merge the adjacent pair of lowest rank. Merging its leftmost
  // occurrence first and re-scanning gives the same result as GPT-2's "merge every
  // occurrence left to right", since a merge never creates a pair ranked below itself.
  auto& ids = scratch_ids_;
  auto& pairs = scratch_merges_;  // pairs[i]: merge of (ids[i], ids[i+1])
  ids.clear();
  for (unsigned char b : piece) ids.push_back(byte_id_[b]);
  pairs.resize(ids.size() - 1);
  for (size_t i = 0; i + 1 < ids.size(); ++i) pairs[i] = merge_of(ids[i], ids[i + 1]);
  while (!pairs.empty()) {
    size_t best = 0;
    for (size_t i = 1; i < pairs.size(); ++i) {
      if (pairs[i].rank < pairs[best].rank) best = i;
    }
    if (pairs[best].rank == kNoMerge) break;
    ids[best] = pairs[best].merged;
    ids.erase(ids.begin() + static_cast<ptrdiff_t>(best) + 1);
    pairs.erase(pairs.begin() + static_cast<ptrdiff_t>(best));
    if (best > 0) pairs[best - 1] = merge_of(ids[best - 1], ids[best]);
    if (best < pairs.size()) pairs[best] = merge_of(ids[best], ids[best + 1]);
  }
  out->insert(out->end(), ids.begin(), ids.end());
  if (cacheable) {
    if (cache_.size() >= kMaxCacheEntries) {
      cache_.clear();
      cache_ids_.clear();
    }
    cache_.emplace(std::string(piece),
                   CacheEntry{static_cast<uint32_t>(cache_ids_.size()), static_cast<uint32_t>(ids.size())});
    cache_ids_.insert(cache_ids_.end(), ids.begin(), ids.end());
  }
}

void BpeTokenizer::encode_append(std::string_view text, std::vector<int32_t>* out) {
  for (size_t pos = 0; pos < text.size();) {
    const size_t end = pretoken_end(text, pos);
    bpe(text.substr(pos, end - pos), out);
    pos = end;
  }
}

size_t BpeTokenizer::encode_chunk(std::string_view text, size_t pos, size_t min_bytes, std::vector<int32_t>* out) {
  const size_t stop = min_bytes >= text.size() - std::min(pos, text.size()) ? text.size() : pos + min_bytes;
  while (pos < stop) {
    const size_t end = pretoken_end(text, pos);
    bpe(text.substr(pos, end - pos), out);
    pos = end;
  }
  return pos;
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text) {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 1);
  encode_append(text, &out);
  return out;
}

std::string BpeTokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    TRI_CHECK(id >= 0 && id < vocab_size(), "cannot decode token id {} at position {}: the vocabulary has ids [0, {})",
              id, i, vocab_size());
    out += id_to_bytes_[static_cast<size_t>(id)];
  }
  return out;
}

}  // namespace trident::data
