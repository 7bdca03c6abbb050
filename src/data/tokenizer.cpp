// Tokenizer selection; see tokenizer.h.
#include "data/tokenizer.h"

#include <filesystem>

#include "core/check.h"
#include "data/assets.h"
#include "data/bpe_tokenizer.h"
#include "data/tiktoken_tokenizer.h"

namespace trident::data {
namespace {

namespace fs = std::filesystem;
constexpr const char* kCl100kFile = "cl100k_base.js";

// GPT-2's tokenizer has a fixed <|endoftext|>; cl100k's comes from its rank file.
int32_t end_of_text_of(const BpeTokenizer&) { return BpeTokenizer::kEndOfText; }
int32_t end_of_text_of(const TiktokenTokenizer& t) { return t.end_of_text(); }
std::optional<std::string> bytes_of(const BpeTokenizer& t, int32_t id) {
  if (id < 0 || id >= t.vocab_size()) return std::nullopt;
  return std::string(t.token_bytes(id));
}
std::optional<std::string> bytes_of(const TiktokenTokenizer& t, int32_t id) { return t.token_bytes(id); }

// The interface over one concrete tokenizer (both have the same encode/decode shape).
template <class Impl>
class Adapter final : public Tokenizer {
 public:
  Adapter(std::string name, Impl t) : name_(std::move(name)), t_(std::move(t)) {}
  std::string name() const override { return name_; }
  size_t encode_chunk(std::string_view text, size_t pos, size_t min_bytes, std::vector<int32_t>* out) override {
    return t_.encode_chunk(text, pos, min_bytes, out);
  }
  std::string decode(std::span<const int32_t> ids) const override { return t_.decode(ids); }
  int32_t vocab_size() const override { return t_.vocab_size(); }
  int32_t end_of_text() const override { return end_of_text_of(t_); }
  std::optional<std::string> token_bytes(int32_t id) const override { return bytes_of(t_, id); }

 private:
  std::string name_;
  Impl t_;
};

std::unique_ptr<Tokenizer> gpt2(const std::string& dir) {
  return std::make_unique<Adapter<BpeTokenizer>>("gpt2", BpeTokenizer::from_dir(dir));
}
std::unique_ptr<Tokenizer> cl100k(const std::string& ranks_path) {
  return std::make_unique<Adapter<TiktokenTokenizer>>("cl100k", TiktokenTokenizer::from_js_ranks(ranks_path));
}

}  // namespace

std::vector<int32_t> Tokenizer::encode(std::string_view text) {
  std::vector<int32_t> out;
  encode_chunk(text, 0, text.size(), &out);
  return out;
}

std::vector<std::string> tokenizer_names() { return {"gpt2", "cl100k"}; }

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec) {
  if (spec == "gpt2") return gpt2(BpeTokenizer::kDefaultAssetDir);
  if (spec == "cl100k") return cl100k(resolve_default_asset(std::string("data/assets/cl100k/") + kCl100kFile));
  const fs::path dir(spec);
  TRI_CHECK(fs::is_directory(dir),
            "unknown tokenizer '{}' (no such folder): give one of {} (scripts/fetch_assets.sh puts their files "
            "under data/assets/) or a folder holding GPT-2's encoder.json + vocab.bpe or {}",
            spec, fmt::join(tokenizer_names(), ", "), kCl100kFile);
  if (fs::exists(dir / kCl100kFile)) return cl100k((dir / kCl100kFile).string());
  return gpt2(spec);
}

}  // namespace trident::data
