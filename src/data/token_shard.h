// Token shards in llm.c's format: a header of 256 int32 (magic 20240520, version 1, token
// count, the rest zero) followed by the tokens as uint16. A writer (streaming, atomic:
// temp file + rename) and a memory-mapped, validated reader.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <span>
#include <string>

namespace trident::data {

inline constexpr int32_t kShardMagic = 20240520;
inline constexpr int32_t kShardVersion = 1;
inline constexpr size_t kShardHeaderInts = 256;
inline constexpr size_t kShardHeaderBytes = kShardHeaderInts * sizeof(int32_t);  // 1024

// Streams tokens into PATH.tmp and renames it to PATH on finish(), so a reader never sees a
// half-written shard. Tokens must lie in [0, 65536). Destroying an unfinished writer removes
// the temporary file.
class TokenShardWriter {
 public:
  explicit TokenShardWriter(std::string path);
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
};

// Writes a whole shard in one call.
void write_token_shard(const std::string& path, std::span<const int32_t> tokens);

// A read-only memory map of a shard, validated at open: the magic, the version, the file size
// against the header's count (1024 + 2 * count bytes) and every token id < vocab_size. Each
// failure is a trident::Error naming the file and the problem. Move-only.
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
  uint16_t operator[](size_t i) const { return tokens_[i]; }
  std::span<const uint16_t> tokens() const { return {tokens_, count_}; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  const uint16_t* tokens_ = nullptr;
  size_t count_ = 0;
};

}  // namespace trident::data
