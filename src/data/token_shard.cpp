// llm.c token shards: streaming atomic writer and validated mmap reader.
#include "data/token_shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "core/check.h"

namespace trident::data {

TokenShardWriter::TokenShardWriter(std::string path, int token_bytes)
    : path_(std::move(path)), tmp_path_(path_ + ".tmp"), token_bytes_(token_bytes) {
  TRI_CHECK(token_bytes == 2 || token_bytes == 4, "token shard {}: tokens are 2 or 4 bytes, not {}", path_,
            token_bytes);
  file_ = std::fopen(tmp_path_.c_str(), "wb");
  TRI_CHECK(file_ != nullptr, "cannot create token shard {}: {}", tmp_path_, std::strerror(errno));
  const int32_t header[kShardHeaderInts] = {};
  TRI_CHECK(std::fwrite(header, sizeof(header), 1, file_) == 1, "cannot write token shard {}: {}", tmp_path_,
            std::strerror(errno));
}

TokenShardWriter::~TokenShardWriter() {
  if (file_ != nullptr) {
    std::fclose(file_);
    std::remove(tmp_path_.c_str());
  }
}

void TokenShardWriter::append(std::span<const int32_t> tokens) {
  TRI_CHECK(file_ != nullptr, "token shard {} is already finished", path_);
  const int32_t max_id = token_bytes_ == 2 ? 65535 : INT32_MAX;
  for (size_t i = 0; i < tokens.size(); ++i) {
    TRI_CHECK(tokens[i] >= 0 && tokens[i] <= max_id,
              "token id {} (token {} of shard {}) does not fit the shard's uint{} format{}", tokens[i], count_ + i,
              path_, 8 * token_bytes_, token_bytes_ == 2 ? "; vocabularies beyond 65,536 ids use 32-bit shards" : "");
  }
  auto write = [&](const auto& buf) {
    TRI_CHECK(buf.empty() || std::fwrite(buf.data(), sizeof(buf[0]), buf.size(), file_) == buf.size(),
              "cannot write token shard {}: {} (disk full?)", tmp_path_, std::strerror(errno));
  };
  if (token_bytes_ == 2) {
    write(std::vector<uint16_t>(tokens.begin(), tokens.end()));
  } else {
    write(std::vector<uint32_t>(tokens.begin(), tokens.end()));
  }
  count_ += tokens.size();
}

void TokenShardWriter::finish() {
  TRI_CHECK(file_ != nullptr, "token shard {} is already finished", path_);
  TRI_CHECK(count_ <= static_cast<size_t>(INT32_MAX), "token shard {} would hold {} tokens, more than the format's {}",
            path_, count_, INT32_MAX);
  int32_t header[kShardHeaderInts] = {};
  header[0] = token_bytes_ == 2 ? kShardMagic : kShardMagic32;
  header[1] = token_bytes_ == 2 ? kShardVersion : kShardVersion32;
  header[2] = static_cast<int32_t>(count_);
  bool ok = std::fseek(file_, 0, SEEK_SET) == 0 && std::fwrite(header, sizeof(header), 1, file_) == 1 &&
            std::fflush(file_) == 0 && ::fsync(::fileno(file_)) == 0;
  const int err = errno;
  ok = (std::fclose(file_) == 0) && ok;
  file_ = nullptr;
  if (!ok) {
    std::remove(tmp_path_.c_str());
    TRI_FAIL("cannot write token shard {}: {} (disk full?)", tmp_path_, std::strerror(err));
  }
  if (std::rename(tmp_path_.c_str(), path_.c_str()) != 0) {
    const int rename_err = errno;
    std::remove(tmp_path_.c_str());
    TRI_FAIL("cannot rename {} to {}: {}", tmp_path_, path_, std::strerror(rename_err));
  }
}

void write_token_shard(const std::string& path, std::span<const int32_t> tokens, int token_bytes) {
  TokenShardWriter writer(path, token_bytes);
  writer.append(tokens);
  writer.finish();
}

TokenShard TokenShard::open(const std::string& path, int32_t vocab_size) {
  TRI_CHECK(vocab_size > 0, "vocab size {} must be positive", vocab_size);
  TokenShard shard;
  shard.path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  TRI_CHECK(fd >= 0, "cannot open token shard {}: {}. Create it with 'trident prepare'", path, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    TRI_FAIL("cannot stat token shard {}: {}", path, std::strerror(err));
  }
  const auto file_bytes = static_cast<size_t>(st.st_size);
  if (file_bytes < kShardHeaderBytes) {
    ::close(fd);
    TRI_FAIL("token shard {} is truncated: {} bytes, shorter than the {}-byte header. Re-create it with 'trident prepare'",
             path, file_bytes, kShardHeaderBytes);
  }
  void* map = ::mmap(nullptr, file_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  ::close(fd);
  TRI_CHECK(map != MAP_FAILED, "cannot memory-map token shard {}: {}", path, std::strerror(map_err));
  shard.map_ = map;
  shard.map_bytes_ = file_bytes;  // from here on the destructor unmaps, also when a check throws

  int32_t header[kShardHeaderInts];
  std::memcpy(header, map, sizeof(header));
  TRI_CHECK(header[0] == kShardMagic || header[0] == kShardMagic32,
            "{} is not a token shard: its magic number is {}, expected {} (uint16 tokens) or {} (uint32 tokens), "
            "llm.c's formats. Was it written by 'trident prepare'?",
            path, header[0], kShardMagic, kShardMagic32);
  const bool wide = header[0] == kShardMagic32;
  const int32_t version = wide ? kShardVersion32 : kShardVersion;
  TRI_CHECK(header[1] == version, "token shard {} has version {}, expected {} for magic {} ({} tokens)", path,
            header[1], version, header[0], wide ? "uint32" : "uint16");
  TRI_CHECK(header[2] >= 0, "token shard {} has a negative token count {} in its header: corrupt", path, header[2]);
  shard.token_bytes_ = wide ? 4 : 2;
  const auto count = static_cast<size_t>(header[2]);
  const size_t expected = kShardHeaderBytes + static_cast<size_t>(shard.token_bytes_) * count;
  TRI_CHECK(file_bytes == expected,
            "token shard {} is {}: its header says {} tokens, i.e. {} bytes, but the file has {} bytes. "
            "Re-create it with 'trident prepare'",
            path, file_bytes < expected ? "truncated" : "corrupt (trailing bytes)", count, expected, file_bytes);
  shard.tokens_ = static_cast<const char*>(map) + kShardHeaderBytes;
  shard.count_ = count;
  // One validation pass at open, so every later read can trust the ids.
  auto validate = [&](const auto* ids) {
    auto max_id = ids[0];
    for (size_t i = 0; i < count; ++i) max_id = std::max(max_id, ids[i]);
    if (static_cast<int64_t>(max_id) < vocab_size) return;
    for (size_t i = 0; i < count; ++i) {
      TRI_CHECK(static_cast<int64_t>(ids[i]) < vocab_size,
                "token shard {} holds token id {} at position {}, outside the vocabulary [0, {}). Was it "
                "made with another tokenizer? The model's vocabulary must cover the shard's (its _meta.json "
                "names the tokenizer and vocab_size; e.g. --vocab-size 100277 for cl100k)",
                path, ids[i], i, vocab_size);
    }
  };
  if (count > 0) {
    if (wide) {
      validate(static_cast<const uint32_t*>(shard.tokens_));
    } else {
      validate(static_cast<const uint16_t*>(shard.tokens_));
    }
  }
  return shard;
}

void TokenShard::copy(size_t begin, size_t count, int32_t* out) const {
  if (token_bytes_ == 2) {
    const auto* src = static_cast<const uint16_t*>(tokens_) + begin;
    for (size_t i = 0; i < count; ++i) out[i] = src[i];
  } else {
    const auto* src = static_cast<const uint32_t*>(tokens_) + begin;
    for (size_t i = 0; i < count; ++i) out[i] = static_cast<int32_t>(src[i]);
  }
}

std::vector<int32_t> TokenShard::to_vector() const {
  std::vector<int32_t> out(count_);
  copy(0, count_, out.data());
  return out;
}

TokenShard::~TokenShard() {
  if (map_ != nullptr) ::munmap(map_, map_bytes_);
}

TokenShard::TokenShard(TokenShard&& other) noexcept { *this = std::move(other); }

TokenShard& TokenShard::operator=(TokenShard&& other) noexcept {
  if (this != &other) {
    if (map_ != nullptr) ::munmap(map_, map_bytes_);
    path_ = std::move(other.path_);
    map_ = std::exchange(other.map_, nullptr);
    map_bytes_ = std::exchange(other.map_bytes_, 0);
    tokens_ = std::exchange(other.tokens_, nullptr);
    count_ = std::exchange(other.count_, 0);
    token_bytes_ = std::exchange(other.token_bytes_, 2);
  }
  return *this;
}

}  // namespace trident::data
