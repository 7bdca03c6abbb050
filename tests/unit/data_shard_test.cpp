// Token shards: round trip through the writer and the mmap reader, and one clear error per
// kind of damage (missing, truncated, wrong magic, bad version, size mismatch, id >= vocab).
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <vector>

#include <unistd.h>

#include "core/check.h"
#include "data/token_shard.h"

namespace trident::data {
namespace {

namespace fs = std::filesystem;

class DataShard : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("trident_data_shard_test_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // Writes a valid shard, then lets the test damage the raw bytes.
  std::vector<char> valid_bytes(const std::vector<int32_t>& tokens) {
    write_token_shard(path("tmp.bin"), tokens);
    std::ifstream in(path("tmp.bin"), std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
  }
  std::string write_raw(const std::string& name, const std::vector<char>& bytes) {
    std::ofstream(path(name), std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return path(name);
  }
  // Expects open() to throw an Error whose message holds every one of `parts`.
  void expect_error(const std::string& file, int32_t vocab, std::initializer_list<std::string> parts) {
    try {
      TokenShard::open(file, vocab);
      ADD_FAILURE() << "expected trident::Error opening " << file;
    } catch (const Error& e) {
      const std::string msg = e.what();
      for (const auto& part : parts) EXPECT_NE(msg.find(part), std::string::npos) << "'" << part << "' not in: " << msg;
    }
  }

  fs::path dir_;
};

TEST_F(DataShard, RoundTrip) {
  std::vector<int32_t> tokens(10000);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>((i * 7919) % 50257);
  tokens.back() = 50256;
  write_token_shard(path("a.bin"), tokens);
  EXPECT_EQ(fs::file_size(path("a.bin")), 1024 + 2 * tokens.size());
  EXPECT_FALSE(fs::exists(path("a.bin.tmp")));
  const TokenShard shard = TokenShard::open(path("a.bin"), 50257);
  ASSERT_EQ(shard.size(), tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) ASSERT_EQ(shard[i], tokens[i]) << i;
  // Header fields as llm.c writes them.
  std::ifstream in(path("a.bin"), std::ios::binary);
  int32_t header[256];
  in.read(reinterpret_cast<char*>(header), sizeof(header));
  EXPECT_EQ(header[0], 20240520);
  EXPECT_EQ(header[1], 1);
  EXPECT_EQ(header[2], 10000);
  EXPECT_EQ(header[3], 0);
}

TEST_F(DataShard, StreamingWriterAndMove) {
  {
    TokenShardWriter w(path("s.bin"));
    w.append(std::vector<int32_t>{1, 2, 3});
    w.append(std::vector<int32_t>{});
    w.append(std::vector<int32_t>{4, 5});
    EXPECT_FALSE(fs::exists(path("s.bin")));  // only after finish
    w.finish();
  }
  TokenShard shard = TokenShard::open(path("s.bin"), 50257);
  TokenShard moved = std::move(shard);
  EXPECT_EQ(shard.size(), 0u);
  ASSERT_EQ(moved.size(), 5u);
  EXPECT_EQ(moved[4], 5);
  // An unfinished writer leaves nothing behind.
  { TokenShardWriter w(path("u.bin")); w.append(std::vector<int32_t>{1}); }
  EXPECT_FALSE(fs::exists(path("u.bin")));
  EXPECT_FALSE(fs::exists(path("u.bin.tmp")));
}

TEST_F(DataShard, EmptyShardIsValid) {
  write_token_shard(path("e.bin"), std::vector<int32_t>{});
  EXPECT_EQ(TokenShard::open(path("e.bin"), 50257).size(), 0u);
}

TEST_F(DataShard, WriterRejectsIdsOutsideUint16) {
  TokenShardWriter w(path("w.bin"));
  EXPECT_THROW(w.append(std::vector<int32_t>{1, 70000}), Error);
  EXPECT_THROW(w.append(std::vector<int32_t>{-1}), Error);
}

TEST_F(DataShard, MissingFile) { expect_error(path("nope.bin"), 50257, {path("nope.bin"), "cannot open", "prepare"}); }

TEST_F(DataShard, ShorterThanHeader) {
  auto bytes = valid_bytes({1, 2, 3});
  bytes.resize(100);
  expect_error(write_raw("short.bin", bytes), 50257, {"short.bin", "truncated", "100 bytes"});
}

TEST_F(DataShard, TruncatedTokens) {
  auto bytes = valid_bytes({1, 2, 3, 4});
  bytes.resize(bytes.size() - 3);
  expect_error(write_raw("trunc.bin", bytes), 50257, {"trunc.bin", "truncated", "4 tokens", "1032 bytes"});
}

TEST_F(DataShard, TrailingBytes) {
  auto bytes = valid_bytes({1, 2, 3, 4});
  bytes.push_back(0);
  expect_error(write_raw("long.bin", bytes), 50257, {"long.bin", "trailing"});
}

TEST_F(DataShard, WrongMagic) {
  auto bytes = valid_bytes({1, 2});
  bytes[0] ^= 0x5A;
  expect_error(write_raw("magic.bin", bytes), 50257, {"magic.bin", "magic", "20240520"});
}

TEST_F(DataShard, BadVersion) {
  auto bytes = valid_bytes({1, 2});
  bytes[4] = 2;
  expect_error(write_raw("version.bin", bytes), 50257, {"version.bin", "version 2"});
}

TEST_F(DataShard, TokenOutOfRange) {
  std::vector<int32_t> tokens(100, 7);
  tokens[42] = 50300;
  write_token_shard(path("vocab.bin"), tokens);
  expect_error(path("vocab.bin"), 50257, {"vocab.bin", "50300", "position 42", "50257"});
  EXPECT_EQ(TokenShard::open(path("vocab.bin"), 65536).size(), 100u);
}

// Vocabularies beyond 65,536 ids (cl100k, Llama 3) need llm.c's uint32 variant.
TEST_F(DataShard, WideRoundTrip) {
  EXPECT_EQ(token_bytes_for_vocab(65536), 2);
  EXPECT_EQ(token_bytes_for_vocab(65537), 4);
  const std::vector<int32_t> tokens = {0, 65535, 65536, 100276, 128255, 7};
  write_token_shard(path("wide.bin"), tokens, token_bytes_for_vocab(128256));
  EXPECT_EQ(fs::file_size(path("wide.bin")), 1024 + 4 * tokens.size());
  std::ifstream in(path("wide.bin"), std::ios::binary);
  int32_t header[3];
  in.read(reinterpret_cast<char*>(header), sizeof(header));
  EXPECT_EQ(header[0], kShardMagic32);
  EXPECT_EQ(header[1], kShardVersion32);
  EXPECT_EQ(header[2], 6);
  const TokenShard shard = TokenShard::open(path("wide.bin"), 128256);
  EXPECT_EQ(shard.token_bytes(), 4);
  EXPECT_EQ(shard.to_vector(), tokens);
  std::vector<int32_t> mid(3);
  shard.copy(2, 3, mid.data());
  EXPECT_EQ(mid, (std::vector<int32_t>{65536, 100276, 128255}));
  expect_error(path("wide.bin"), 100277, {"wide.bin", "128255", "position 4", "100277"});
}

TEST_F(DataShard, NarrowWriterRefusesWideIds) {
  TokenShardWriter w(path("narrow.bin"));
  try {
    w.append(std::vector<int32_t>{1, 70000});
    ADD_FAILURE() << "expected an error for id 70000 in a uint16 shard";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("32-bit shards"), std::string::npos) << e.what();
  }
}

TEST_F(DataShard, WideTruncatedAndWrongVersion) {
  write_token_shard(path("w.bin"), std::vector<int32_t>{1, 2, 3}, 4);
  std::ifstream in(path("w.bin"), std::ios::binary);
  std::vector<char> bytes{std::istreambuf_iterator<char>(in), {}};
  auto cut = bytes;
  cut.resize(cut.size() - 2);
  expect_error(write_raw("wcut.bin", cut), 1000, {"wcut.bin", "truncated", "1036 bytes"});
  bytes[4] = 1;  // version 1 belongs to the uint16 magic
  expect_error(write_raw("wver.bin", bytes), 1000, {"wver.bin", "version 1", "expected 7"});
}

}  // namespace
}  // namespace trident::data
