// Token shards in llm.c's format: a header of 256 int32 (magic, version, token count, the rest
// zero) followed by the tokens: uint16 (magic 20240520, version 1: GPT-2's vocabulary) or, for
// vocabularies beyond 65,536 ids, uint32 (magic 20240801, version 7: llm.c's Llama 3 variant).
// A writer (streaming, atomic: temp file + rename) and a memory-mapped, validated reader that
// takes either width.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

namespace trident::data {

inline constexpr int32_t kShardMagic = 20240520;  // uint16 tokens
inline constexpr int32_t kShardVersion = 1;
inline constexpr int32_t kShardMagic32 = 20240801;  // uint32 tokens
inline constexpr int32_t kShardVersion32 = 7;
// The narrowest shard format that holds every id of a vocabulary.
inline constexpr int token_bytes_for_vocab(int64_t vocab_size) { return vocab_size > 65536 ? 4 : 2; }
inline constexpr size_t kShardHeaderInts = 256;
inline constexpr size_t kShardHeaderBytes = kShardHeaderInts * sizeof(int32_t);  // 1024

// Streams tokens into PATH.tmp and renames it to PATH on finish(), so a reader never sees a
// half-written shard. token_bytes 2: ids in [0, 65536); 4: ids in [0, 2^31). Destroying an
// unfinished writer removes the temporary file.
class TokenShardWriter {
 public:
  explicit TokenShardWriter(std::string path, int token_bytes = 2);
  ~TokenShardWriter();
  TokenShardWriter(const TokenShardWriter&) = delete;
  TokenShardWriter& operator=(const TokenShardWriter&) = delete;

  void append(std::span<const int32_t> tokens);
  void finish();  // writes the count into the header, flushes, fsyncs, renames
  size_t count() const { return count_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_, tmp_path_;
  std::FILE* file_ = nullptr;
  size_t count_ = 0;
  int token_bytes_ = 2;
};

// Writes a whole shard in one call.
void write_token_shard(const std::string& path, std::span<const int32_t> tokens, int token_bytes = 2);

// A read-only memory map of a shard, validated at open: the magic, the version, the file size
// against the header's count (1024 + width * count bytes) and every token id < vocab_size.
// Each failure is a trident::Error naming the file and the problem. Move-only.
class TokenShard {
 public:
  static TokenShard open(const std::string& path, int32_t vocab_size);
  TokenShard() = default;
  ~TokenShard();
  TokenShard(TokenShard&& other) noexcept;
  TokenShard& operator=(TokenShard&& other) noexcept;
  TokenShard(const TokenShard&) = delete;
  TokenShard& operator=(const TokenShard&) = delete;

  size_t size() const { return count_; }
  int32_t operator[](size_t i) const {
    return token_bytes_ == 2 ? static_cast<const uint16_t*>(tokens_)[i]
                             : static_cast<int32_t>(static_cast<const uint32_t*>(tokens_)[i]);
  }
  // Copies tokens [begin, begin + count) as int32 ids (begin + count <= size()).
  void copy(size_t begin, size_t count, int32_t* out) const;
  std::vector<int32_t> to_vector() const;
  int token_bytes() const { return token_bytes_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  const void* tokens_ = nullptr;  // uint16_t or uint32_t, by token_bytes_
  size_t count_ = 0;
  int token_bytes_ = 2;
};

}  // namespace trident::data
