// tiktoken-style BPE over cl100k's ranks; see tiktoken_tokenizer.h.
#include "data/tiktoken_tokenizer.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/check.h"
#include "data/base64.h"
#include "data/pretokenizer_cl100k.h"

namespace trident::data {
namespace {

// The pattern pretokenizer_cl100k.cpp implements, as js-tiktoken writes it.
constexpr std::string_view kCl100kPattern =
    "('s|'S|'t|'T|'re|'rE|'Re|'RE|'ve|'vE|'Ve|'VE|'m|'M|'ll|'lL|'Ll|'LL|'d|'D)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
    "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TRI_CHECK(in.good(), "cannot open tokenizer ranks {}; run scripts/fetch_assets.sh (it takes them from the npm "
            "package js-tiktoken)", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

TiktokenTokenizer TiktokenTokenizer::from_js_ranks(const std::string& path) {
  const std::string text = read_file(path);
  // "export default {...};" (ES module) or "module.exports = {...};" (CommonJS).
  const size_t open = text.find('{'), close = text.rfind('}');
  TRI_CHECK(open != std::string::npos && close != std::string::npos && open < close,
            "{} is not a js-tiktoken ranks module (no object literal)", path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text.substr(open, close - open + 1));
  } catch (const nlohmann::json::exception& e) {
    TRI_FAIL("{} is not a js-tiktoken ranks module: {}", path, e.what());
  }
  TRI_CHECK(j.is_object() && j.contains("pat_str") && j.contains("bpe_ranks") && j.contains("special_tokens"),
            "{} lacks pat_str, bpe_ranks or special_tokens: not a js-tiktoken ranks module", path);
  TRI_CHECK(j["pat_str"] == kCl100kPattern,
            "{} uses the pre-tokenizer pattern {}; Trident implements only cl100k_base's", path,
            j["pat_str"].dump());
  TiktokenTokenizer t;
  // bpe_ranks: lines "<name> <first rank> <base64 token> <base64 token> ...", ranks consecutive.
  std::istringstream lines(j["bpe_ranks"].get<std::string>());
  std::string line;
  int32_t max_id = -1;
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    std::istringstream fields(line);
    std::string name, token;
    int64_t rank = -1;
    fields >> name >> rank;
    TRI_CHECK(!fields.fail() && rank >= 0 && rank < INT32_MAX, "{}: malformed ranks line starting '{}'", path,
              line.substr(0, 40));
    while (fields >> token) {
      const auto bytes = base64_decode(token);
      TRI_CHECK(bytes && !bytes->empty(), "{}: token {} at rank {} is not base64", path, token, rank);
      const auto [it, fresh] = t.ranks_.emplace(*bytes, static_cast<int32_t>(rank));
      TRI_CHECK(fresh, "{}: token {} appears twice (ranks {} and {})", path, token, it->second, rank);
      max_id = std::max(max_id, static_cast<int32_t>(rank));
      ++rank;
    }
  }
  TRI_CHECK(t.ranks_.size() >= 256, "{} holds {} ranks; a byte-level vocabulary needs at least the 256 bytes", path,
            t.ranks_.size());
  for (const auto& [name, id] : j["special_tokens"].items()) {
    TRI_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() < INT32_MAX,
              "{}: special token {} has id {}", path, name, id.dump());
    max_id = std::max(max_id, id.get<int32_t>());
  }
  t.id_to_bytes_.resize(static_cast<size_t>(max_id) + 1);
  t.is_special_.assign(t.id_to_bytes_.size(), false);
  for (const auto& [bytes, id] : t.ranks_) t.id_to_bytes_[static_cast<size_t>(id)] = bytes;
  for (const auto& [name, id] : j["special_tokens"].items()) {
    t.id_to_bytes_[id.get<size_t>()] = name;
    t.is_special_[id.get<size_t>()] = true;
  }
  for (int b = 0; b < 256; ++b) {
    TRI_CHECK(t.ranks_.count(std::string(1, static_cast<char>(b))) == 1,
              "{} has no token for byte {}: not a byte-level vocabulary", path, b);
  }
  TRI_CHECK(j["special_tokens"].contains("<|endoftext|>"), "{} has no <|endoftext|> special token", path);
  t.end_of_text_ = j["special_tokens"]["<|endoftext|>"].get<int32_t>();
  return t;
}

int32_t TiktokenTokenizer::rank_of(std::string_view bytes) const {
  const auto it = ranks_.find(bytes);
  return it == ranks_.end() ? kNoRank : it->second;
}

void TiktokenTokenizer::bpe(std::string_view piece, std::vector<int32_t>* out) {
  if (const int32_t whole = rank_of(piece); whole != kNoRank) {
    out->push_back(whole);
    return;
  }
  // parts_[i] is where part i starts; pair_ranks_[i] the rank of parts i and i+1 joined.
  const size_t n = piece.size();
  parts_.resize(n + 1);
  for (size_t i = 0; i <= n; ++i) parts_[i] = i;
  pair_ranks_.resize(n);
  auto pair_rank = [&](size_t i) {
    return i + 2 < parts_.size() ? rank_of(piece.substr(parts_[i], parts_[i + 2] - parts_[i])) : kNoRank;
  };
  for (size_t i = 0; i + 1 < n; ++i) pair_ranks_[i] = pair_rank(i);
  while (parts_.size() > 2) {
    size_t best = 0;
    int32_t best_rank = kNoRank;
    for (size_t i = 0; i + 2 < parts_.size(); ++i) {
      if (pair_ranks_[i] < best_rank) best_rank = pair_ranks_[i], best = i;
    }
    if (best_rank == kNoRank) break;
    parts_.erase(parts_.begin() + static_cast<std::ptrdiff_t>(best) + 1);
    pair_ranks_.erase(pair_ranks_.begin() + static_cast<std::ptrdiff_t>(best) + 1);
    pair_ranks_[best] = pair_rank(best);
    if (best > 0) pair_ranks_[best - 1] = pair_rank(best - 1);
  }
  for (size_t i = 0; i + 1 < parts_.size(); ++i) {
    const int32_t r = rank_of(piece.substr(parts_[i], parts_[i + 1] - parts_[i]));
    TRI_CHECK(r != kNoRank, "internal: BPE part without a rank");  // every byte has one
    out->push_back(r);
  }
}

size_t TiktokenTokenizer::encode_chunk(std::string_view text, size_t pos, size_t min_bytes, std::vector<int32_t>* out) {
  const size_t stop = min_bytes >= text.size() - std::min(pos, text.size()) ? text.size() : pos + min_bytes;
  while (pos < stop) {
    const size_t end = cl100k_pretoken_end(text, pos);
    bpe(text.substr(pos, end - pos), out);
    pos = end;
  }
  return pos;
}

std::vector<int32_t> TiktokenTokenizer::encode(std::string_view text) {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 1);
  encode_chunk(text, 0, text.size(), &out);
  return out;
}

std::optional<std::string> TiktokenTokenizer::token_bytes(int32_t id) const {
  if (id < 0 || id >= vocab_size() || id_to_bytes_[static_cast<size_t>(id)].empty()) return std::nullopt;
  return id_to_bytes_[static_cast<size_t>(id)];
}

std::string TiktokenTokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    TRI_CHECK(id >= 0 && id < vocab_size() && !id_to_bytes_[static_cast<size_t>(id)].empty(),
              "cannot decode token id {} at position {}: not a token of this vocabulary (ids [0, {}) with gaps)", id,
              i, vocab_size());
    out += id_to_bytes_[static_cast<size_t>(id)];
  }
  return out;
}

}  // namespace trident::data
