// The tokenizers `trident prepare` can use, behind one small interface: GPT-2's BPE
// (bpe_tokenizer.h, 50,257 ids, uint16 shards) and OpenAI's cl100k_base (tiktoken_tokenizer.h,
// 100,277 ids, uint32 shards). A tokenizer is named by a spec: a name ("gpt2", "cl100k") whose
// files scripts/fetch_assets.sh puts under data/assets/, or a folder holding one of them.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace trident::data {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::string name() const = 0;
  // Encodes text from pos for at least min_bytes bytes, stopping at a piece boundary; returns
  // where it stopped. Chunk by chunk equals encoding the whole text.
  virtual size_t encode_chunk(std::string_view text, size_t pos, size_t min_bytes, std::vector<int32_t>* out) = 0;
  virtual std::string decode(std::span<const int32_t> ids) const = 0;
  virtual int32_t vocab_size() const = 0;  // one past the largest id
  virtual int32_t end_of_text() const = 0;  // <|endoftext|>: the document separator
  // The bytes of one id, or nullopt for an id no token has (cl100k leaves gaps below its
  // special tokens); for printing a model's samples, which may land on such an id.
  virtual std::optional<std::string> token_bytes(int32_t id) const = 0;
  std::vector<int32_t> encode(std::string_view text);
};

// The names load_tokenizer accepts.
std::vector<std::string> tokenizer_names();

// `spec`: a name from tokenizer_names() (files from data/assets/<name>/), or a folder holding
// GPT-2's encoder.json + vocab.bpe or cl100k_base.js. Throws trident::Error naming what is
// missing and how to get it.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec);

}  // namespace trident::data
