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

TokenShardWriter::TokenShardWriter(std::string path) : path_(std::move(path)), tmp_path_(path_ + ".tmp") {
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
  std::vector<uint16_t> buf(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    TRI_CHECK(tokens[i] >= 0 && tokens[i] <= 65535,
              "token id {} (token {} of shard {}) does not fit the shard's uint16 format", tokens[i],
              count_ + i, path_);
    buf[i] = static_cast<uint16_t>(tokens[i]);
  }
  TRI_CHECK(buf.empty() || std::fwrite(buf.data(), sizeof(uint16_t), buf.size(), file_) == buf.size(),
            "cannot write token shard {}: {} (disk full?)", tmp_path_, std::strerror(errno));
  count_ += tokens.size();
}

void TokenShardWriter::finish() {
  TRI_CHECK(file_ != nullptr, "token shard {} is already finished", path_);
  TRI_CHECK(count_ <= static_cast<size_t>(INT32_MAX), "token shard {} would hold {} tokens, more than the format's {}",
            path_, count_, INT32_MAX);
  int32_t header[kShardHeaderInts] = {};
  header[0] = kShardMagic;
  header[1] = kShardVersion;
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

void write_token_shard(const std::string& path, std::span<const int32_t> tokens) {
  TokenShardWriter writer(path);
  writer.append(tokens);
  writer.finish();
}

TokenShard TokenShard::open(const std::string& path, int32_t vocab_size) {
  TRI_CHECK(vocab_size > 0 && vocab_size <= 65536, "vocab size {} does not fit a uint16 token shard", vocab_size);
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
  TRI_CHECK(header[0] == kShardMagic,
            "{} is not a token shard: its magic number is {}, expected {} (llm.c's format). Was it written by "
            "'trident prepare'?",
            path, header[0], kShardMagic);
  TRI_CHECK(header[1] == kShardVersion, "token shard {} has version {}, expected {} (uint16 tokens)", path, header[1],
            kShardVersion);
  TRI_CHECK(header[2] >= 0, "token shard {} has a negative token count {} in its header: corrupt", path, header[2]);
  const auto count = static_cast<size_t>(header[2]);
  const size_t expected = kShardHeaderBytes + 2 * count;
  TRI_CHECK(file_bytes == expected,
            "token shard {} is {}: its header says {} tokens, i.e. {} bytes, but the file has {} bytes. "
            "Re-create it with 'trident prepare'",
            path, file_bytes < expected ? "truncated" : "corrupt (trailing bytes)", count, expected, file_bytes);
  shard.tokens_ = reinterpret_cast<const uint16_t*>(static_cast<const char*>(map) + kShardHeaderBytes);
  shard.count_ = count;
  // One validation pass at open, so every later read can trust the ids.
  uint16_t max_id = 0;
  for (size_t i = 0; i < count; ++i) max_id = std::max(max_id, shard.tokens_[i]);
  if (count > 0 && max_id >= vocab_size) {
    for (size_t i = 0; i < count; ++i) {
      TRI_CHECK(shard.tokens_[i] < vocab_size,
                "token shard {} holds token id {} at position {}, outside the vocabulary [0, {}). Was it "
                "made with another tokenizer?",
                path, shard.tokens_[i], i, vocab_size);
    }
  }
  return shard;
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
  }
  return *this;
}

}  // namespace trident::data
