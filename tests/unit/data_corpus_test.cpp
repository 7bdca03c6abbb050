// Jane Austen corpus: SHA-256 known answers, the R lazy-load reader on r-cran-janeaustenr's
// Rdata.rdb (the six novels with pinned checksums) and its errors on damaged files.
// Needs data/assets/janeaustenr (scripts/fetch_assets.sh).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <vector>

#include <unistd.h>

#include "core/check.h"
#include "data/assets.h"
#include "data/janeausten.h"
#include "data/rdata_reader.h"
#include "data/sha256.h"

namespace trident::data {
namespace {

namespace fs = std::filesystem;

std::string rdb_path() { return asset_path(find_repo_root(TRIDENT_SOURCE_DIR), "janeaustenr/data/Rdata.rdb"); }

template <typename F>
void expect_error(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "expected trident::Error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& part : parts) EXPECT_NE(msg.find(part), std::string::npos) << "'" << part << "' not in: " << msg;
  }
}

TEST(DataSha256, KnownAnswers) {
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(sha256_hex(std::string(1000000, 'a')), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(DataCorpus, IndexListsTheSixNovels) {
  std::string rdx = rdb_path();
  rdx.replace(rdx.size() - 4, 4, ".rdx");
  const auto entries = read_rdx_index(rdx);
  ASSERT_EQ(entries.size(), 6u);
  EXPECT_EQ(entries[0].name, "emma");
  EXPECT_EQ(entries[0].offset, 0);
  EXPECT_EQ(entries[0].length, 352043);
  EXPECT_EQ(entries[5].name, "sensesensibility");
}

TEST(DataCorpus, ExtractsPinnedNovels) {
  const auto novels = load_jane_austen(rdb_path());  // checks every sha256 itself
  ASSERT_EQ(novels.size(), 6u);
  size_t total = 0;
  for (const auto& n : novels) total += n.text.size();
  EXPECT_EQ(total, 4025023u);
  EXPECT_EQ(novels.back().key, kJaneAustenHeldOut);
  EXPECT_EQ(novels.back().text.substr(0, 10), "Persuasion");
  EXPECT_EQ(novels[1].text.substr(0, 19), "PRIDE AND PREJUDICE");
  EXPECT_NE(novels[1].text.find("It is a truth universally acknowledged"), std::string::npos);
  for (const auto& n : novels) EXPECT_NE(n.text.back(), '\n');
}

class DataCorpusDamage : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("trident_data_corpus_test_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    std::string rdx = rdb_path();
    rdx.replace(rdx.size() - 4, 4, ".rdx");
    fs::copy_file(rdx, dir_ / "Rdata.rdx", fs::copy_options::overwrite_existing);
    std::ifstream in(rdb_path(), std::ios::binary);
    rdb_.assign(std::istreambuf_iterator<char>(in), {});
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string write_rdb(const std::string& bytes) {
    std::ofstream((dir_ / "Rdata.rdb"), std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return (dir_ / "Rdata.rdb").string();
  }
  fs::path dir_;
  std::string rdb_;
};

TEST_F(DataCorpusDamage, MissingFile) {
  expect_error([&] { load_jane_austen((dir_ / "nope" / "Rdata.rdb").string()); }, {"nope/Rdata.rdx", "fetch_assets.sh"});
}

TEST_F(DataCorpusDamage, Truncated) {
  const std::string path = write_rdb(rdb_.substr(0, rdb_.size() / 2));
  expect_error([&] { load_jane_austen(path); }, {"Rdata.rdb", "truncated"});
}

TEST_F(DataCorpusDamage, CorruptStream) {
  std::string bytes = rdb_;
  for (size_t i = 1000; i < 1100; ++i) bytes[i] = static_cast<char>(bytes[i] ^ 0x55);  // inside emma's stream
  const std::string path = write_rdb(bytes);
  expect_error([&] { read_rdb_character_vector(path, "emma"); }, {"Rdata.rdb", "emma"});
}

TEST_F(DataCorpusDamage, UnknownObject) {
  const std::string path = write_rdb(rdb_);
  expect_error([&] { read_rdb_object(path, "sanditon"); }, {"sanditon", "persuasion"});
}

TEST(DataRUnserialize, RejectsNonXdrAndTruncatedData) {
  expect_error([] { r_unserialize("A\nxxxx", "test"); }, {"test", "XDR"});
  // A character vector announcing 5 elements, then nothing.
  const std::string truncated("X\n\0\0\0\3\0\4\2\1\0\3\5\0\0\0\0\5UTF-8\0\0\0\x10\0\0\0\5", 31);
  expect_error([&] { r_unserialize(truncated, "t2"); }, {"t2", "ends early"});
}

}  // namespace
}  // namespace trident::data
