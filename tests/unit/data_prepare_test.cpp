// `trident prepare`: documents joined with <|endoftext|>, the val split, the Jane Austen corpus
// (Persuasion held out) with its token counts and entropies, the CLI entry point and errors.
// Needs data/assets (scripts/fetch_assets.sh).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include <unistd.h>

#include "cli/commands.h"
#include "core/check.h"
#include "data/assets.h"
#include "data/bpe_tokenizer.h"
#include "data/prepare.h"
#include "data/token_shard.h"

namespace trident::data {
namespace {

namespace fs = std::filesystem;

class DataPrepare : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = find_repo_root(TRIDENT_SOURCE_DIR);
    gpt2_ = asset_path(root_, "gpt2");
    dir_ = fs::temp_directory_path() / ("trident_data_prepare_test_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ / name, std::ios::binary) << text;
    return (dir_ / name).string();
  }
  std::string root_, gpt2_;
  fs::path dir_;
};

std::vector<int32_t> all_tokens(const TokenShard& s) { return s.to_vector(); }

TEST_F(DataPrepare, DocumentsAreSeparatedByEndOfText) {
  const std::string a = "Hello world\n", b = "It's a truth universally acknowledged.";
  PrepareOptions opt;
  opt.inputs = {write("a.txt", a), write("b.txt", b)};
  opt.out_prefix = (dir_ / "out" / "x").string();
  opt.val_fraction = 0.0;
  opt.tokenizer = gpt2_;
  std::ostringstream log;
  const auto r = prepare(opt, log);
  EXPECT_EQ(r.train.documents, 2);
  EXPECT_EQ(r.val.tokens, 0);
  auto tok = BpeTokenizer::from_dir(gpt2_);
  const auto train = TokenShard::open(r.train.path, tok.vocab_size());
  std::vector<int32_t> expected = {BpeTokenizer::kEndOfText};
  for (int32_t t : tok.encode(a)) expected.push_back(t);
  expected.push_back(BpeTokenizer::kEndOfText);
  for (int32_t t : tok.encode(b)) expected.push_back(t);
  EXPECT_EQ(all_tokens(train), expected);
  EXPECT_TRUE(fs::exists(dir_ / "out" / "x_meta.json"));
  // Not a terminal: plain progress lines ending in newlines, no carriage returns.
  EXPECT_EQ(log.str().find('\r'), std::string::npos);
  EXPECT_NE(log.str().find("100%"), std::string::npos);
}

TEST_F(DataPrepare, ValFractionTakesTheTailOfTheStream) {
  std::string text;
  for (int i = 0; i < 200; ++i) text += "Line number " + std::to_string(i) + " of the text.\n";
  PrepareOptions opt;
  opt.inputs = {write("t.txt", text)};
  opt.out_prefix = (dir_ / "t").string();
  opt.val_fraction = 0.25;
  opt.tokenizer = gpt2_;
  opt.progress = false;
  std::ostringstream log;
  const auto r = prepare(opt, log);
  auto tok = BpeTokenizer::from_dir(gpt2_);
  const int64_t total = 1 + static_cast<int64_t>(tok.encode(text).size());
  EXPECT_EQ(r.train.tokens + r.val.tokens, total);
  EXPECT_EQ(r.val.tokens, std::llround(total * 0.25));
  const auto train = TokenShard::open(r.train.path, 50257), val = TokenShard::open(r.val.path, 50257);
  std::vector<int32_t> joined = all_tokens(train), tail = all_tokens(val);
  joined.insert(joined.end(), tail.begin(), tail.end());
  EXPECT_EQ(tok.decode(joined), "<|endoftext|>" + text);
  EXPECT_GT(r.train.unigram_entropy_nats, 0.0);
}

TEST_F(DataPrepare, JaneAustenHoldsOutPersuasion) {
  PrepareOptions opt;
  opt.corpus = "janeausten";
  opt.rdb = asset_path(root_, "janeaustenr/data/Rdata.rdb");
  opt.out_prefix = (dir_ / "janeausten").string();
  opt.tokenizer = gpt2_;
  std::ostringstream log;
  const auto r = prepare(opt, log);
  EXPECT_EQ(r.train.documents, 5);
  EXPECT_EQ(r.val.documents, 1);
  // Pinned: the corpus text is pinned by sha256 and the tokenizer is deterministic.
  EXPECT_EQ(r.train.tokens, 878249);
  EXPECT_EQ(r.val.tokens, 115079);  // the same count as gpt-3-encoder (node) on this text
  EXPECT_NEAR(r.train.unigram_entropy_nats, 6.43768, 1e-4);
  EXPECT_NEAR(r.val.unigram_entropy_nats, 6.28129, 1e-4);
  EXPECT_GT(r.val_cross_entropy_under_train_unigram_nats, r.val.unigram_entropy_nats);
  const auto val = TokenShard::open(r.val.path, 50257);
  auto tok = BpeTokenizer::from_dir(gpt2_);
  EXPECT_EQ(tok.decode(std::vector<int32_t>{val[0], val[1]}), "<|endoftext|>Pers");
}

TEST_F(DataPrepare, CommandLine) {
  const std::string in = write("c.txt", "one two three four five six seven eight nine ten");
  const std::string out = (dir_ / "cli").string();
  const std::string tokdir = gpt2_;
  std::vector<std::string> args = {"prepare", "--input", in, "--out", out, "--val-fraction", "0.2",
                                   "--tokenizer", tokdir, "--quiet"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  testing::internal::CaptureStdout();
  EXPECT_EQ(cli::run_prepare(static_cast<int>(argv.size()), argv.data()), 0);
  const std::string printed = testing::internal::GetCapturedStdout();
  EXPECT_NE(printed.find("unigram entropy"), std::string::npos) << printed;
  EXPECT_EQ(TokenShard::open(out + "_train.bin", 50257).size() + TokenShard::open(out + "_val.bin", 50257).size(), 11u);  // 10 words + <|endoftext|>
}

TEST_F(DataPrepare, Errors) {
  std::ostringstream log;
  PrepareOptions opt;
  opt.tokenizer = gpt2_;
  opt.out_prefix = (dir_ / "e").string();
  EXPECT_THROW(prepare(opt, log), Error);  // no input
  opt.inputs = {(dir_ / "missing.txt").string()};
  try {
    prepare(opt, log);
    ADD_FAILURE() << "expected trident::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing.txt"), std::string::npos) << e.what();
  }
  opt.inputs = {write("ok.txt", "hello")};
  opt.val_fraction = 1.5;
  EXPECT_THROW(prepare(opt, log), Error);
  opt.val_fraction = 0.1;
  opt.corpus = "shakespeare";
  EXPECT_THROW(prepare(opt, log), Error);
  opt.corpus = "";
  opt.tokenizer = (dir_ / "no-tokenizer").string();
  try {
    prepare(opt, log);
    ADD_FAILURE() << "expected trident::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("fetch_assets.sh"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace trident::data
