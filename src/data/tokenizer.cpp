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

class Gpt2 final : public Tokenizer {
 public:
  explicit Gpt2(BpeTokenizer t) : t_(std::move(t)) {}
  std::string name() const override { return "gpt2"; }
  size_t encode_chunk(std::string_view text, size_t pos, size_t min_bytes, std::vector<int32_t>* out) override {
    return t_.encode_chunk(text, pos, min_bytes, out);
  }
  std::string decode(std::span<const int32_t> ids) const override { return t_.decode(ids); }
  int32_t vocab_size() const override { return t_.vocab_size(); }
  int32_t end_of_text() const override { return BpeTokenizer::kEndOfText; }
  std::optional<std::string> token_bytes(int32_t id) const override {
    if (id < 0 || id >= t_.vocab_size()) return std::nullopt;
    return std::string(t_.token_bytes(id));
  }

 private:
  BpeTokenizer t_;
};

class Cl100k final : public Tokenizer {
 public:
  explicit Cl100k(TiktokenTokenizer t) : t_(std::move(t)) {}
  std::string name() const override { return "cl100k"; }
  size_t encode_chunk(std::string_view text, size_t pos, size_t min_bytes, std::vector<int32_t>* out) override {
    return t_.encode_chunk(text, pos, min_bytes, out);
  }
  std::string decode(std::span<const int32_t> ids) const override { return t_.decode(ids); }
  int32_t vocab_size() const override { return t_.vocab_size(); }
  int32_t end_of_text() const override { return t_.end_of_text(); }
  std::optional<std::string> token_bytes(int32_t id) const override { return t_.token_bytes(id); }

 private:
  TiktokenTokenizer t_;
};

}  // namespace

std::vector<int32_t> Tokenizer::encode(std::string_view text) {
  std::vector<int32_t> out;
  encode_chunk(text, 0, text.size(), &out);
  return out;
}

std::vector<std::string> tokenizer_names() { return {"gpt2", "cl100k"}; }

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec) {
  if (spec == "gpt2") return std::make_unique<Gpt2>(BpeTokenizer::from_dir(BpeTokenizer::kDefaultAssetDir));
  if (spec == "cl100k") {
    return std::make_unique<Cl100k>(
        TiktokenTokenizer::from_js_ranks(resolve_default_asset(std::string("data/assets/cl100k/") + kCl100kFile)));
  }
  const fs::path dir(spec);
  TRI_CHECK(fs::is_directory(dir),
            "unknown tokenizer '{}' (no such folder): give one of {} (scripts/fetch_assets.sh puts their files "
            "under data/assets/) or a folder holding GPT-2's encoder.json + vocab.bpe or {}",
            spec, fmt::join(tokenizer_names(), ", "), kCl100kFile);
  if (fs::exists(dir / kCl100kFile)) return std::make_unique<Cl100k>(TiktokenTokenizer::from_js_ranks((dir / kCl100kFile).string()));
  return std::make_unique<Gpt2>(BpeTokenizer::from_dir(spec));
}

}  // namespace trident::data
