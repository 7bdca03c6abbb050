// GPT-2 BPE tokenizer: ids against fixtures computed by the npm package gpt-3-encoder (OpenAI's
// encoder in JavaScript), byte round trips including invalid UTF-8, the pre-tokenizer's
// splits and the errors for bad files. Needs data/assets/gpt2 (scripts/fetch_assets.sh).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <random>

#include "core/check.h"
#include "data/assets.h"
#include "data/bpe_tokenizer.h"
#include "data/byte_unicode.h"
#include "data/pretokenizer.h"
#include "data/unicode_class.h"

namespace trident::data {
namespace {

std::string repo_root() { return find_repo_root(TRIDENT_SOURCE_DIR); }

BpeTokenizer& tokenizer() {
  static BpeTokenizer tok = BpeTokenizer::from_dir(asset_path(repo_root(), "gpt2"));
  return tok;
}

TEST(DataTokenizer, LoadsGpt2Vocabulary) {
  EXPECT_EQ(tokenizer().vocab_size(), 50257);
  EXPECT_EQ(tokenizer().merge_count(), 50000u);
  EXPECT_EQ(tokenizer().token_bytes(BpeTokenizer::kEndOfText), "<|endoftext|>");
}

TEST(DataTokenizer, HelloWorld) {
  EXPECT_EQ(tokenizer().encode("Hello world"), (std::vector<int32_t>{15496, 995}));
  EXPECT_EQ(tokenizer().decode(std::vector<int32_t>{15496, 995}), "Hello world");
}

TEST(DataTokenizer, MatchesReferenceEncoderOnFixtures) {
  const std::string path = repo_root() + "/tests/fixtures/tokenizer/cases.json";
  std::ifstream in(path);
  ASSERT_TRUE(in.good()) << "cannot open " << path;
  const auto cases = nlohmann::json::parse(in);
  ASSERT_GE(cases.size(), 300u);
  size_t checked = 0;
  for (const auto& c : cases) {
    const std::string text = c.at("text").get<std::string>();
    const auto expected = c.at("ids").get<std::vector<int32_t>>();
    EXPECT_EQ(tokenizer().encode(text), expected) << "text: '" << text << "'";
    EXPECT_EQ(tokenizer().decode(expected), text);
    ++checked;
  }
  EXPECT_EQ(checked, cases.size());
}

TEST(DataTokenizer, EncodingDoesNotDependOnTheCache) {
  // A fresh tokenizer (empty cache) and a warm one agree, also on a concatenation.
  BpeTokenizer fresh = BpeTokenizer::from_dir(asset_path(repo_root(), "gpt2"));
  const std::string text = "It's 2024: caf\xc3\xa9   costs $3.50\n\n  and more's the pity!";
  EXPECT_EQ(fresh.encode(text), tokenizer().encode(text));
  EXPECT_EQ(fresh.encode(text), tokenizer().encode(text));
}

TEST(DataTokenizer, RoundTripsInvalidUtf8) {
  const std::vector<std::string> samples = {
      std::string("\xff"), std::string("\x80"), std::string("abc\x80" "def"), std::string("\xc3"),
      std::string("\xc3(", 2), std::string("\xe2\x82"), std::string("\xed\xa0\x80"),  // surrogate
      std::string("\xc0\xaf"),                                                         // overlong
      std::string("\xf4\x90\x80\x80"),                                                 // > U+10FFFF
      std::string("caf\xe9 cr\xe8" "me"),                                               // Latin-1
      std::string("\x00\x01 \xfe\xff", 6), std::string(" \xff\xff word \xf0\x9f\x98"),
  };
  for (const auto& s : samples) {
    const auto ids = tokenizer().encode(s);
    EXPECT_EQ(tokenizer().decode(ids), s);
    for (int32_t id : ids) EXPECT_TRUE(id >= 0 && id < tokenizer().vocab_size());
  }
  // An invalid byte stands alone as the single-byte token.
  EXPECT_EQ(tokenizer().encode("\xff"), std::vector<int32_t>{tokenizer().token_id("\xff")});
}

TEST(DataTokenizer, RoundTripsRandomBytes) {
  std::mt19937 gen(7);
  for (int trial = 0; trial < 300; ++trial) {
    std::string s(gen() % 200, '\0');
    // Mix of ASCII, high bytes and white space so every class and boundary appears.
    for (auto& ch : s) {
      const uint32_t r = gen() % 4;
      ch = static_cast<char>(r == 0 ? gen() % 256 : r == 1 ? " \n\t'"[gen() % 4] : 'a' + gen() % 26);
    }
    const auto ids = tokenizer().encode(s);
    ASSERT_EQ(tokenizer().decode(ids), s);
  }
}

TEST(DataTokenizer, DecodeRejectsOutOfRangeIds) {
  try {
    tokenizer().decode(std::vector<int32_t>{15496, 50257});
    FAIL() << "expected trident::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("50257"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("position 1"), std::string::npos) << e.what();
  }
}

TEST(DataTokenizer, MissingFilesNameTheFileAndTheFix) {
  try {
    BpeTokenizer::from_files("/nonexistent/encoder.json", "/nonexistent/vocab.bpe");
    FAIL() << "expected trident::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/encoder.json"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("fetch_assets.sh"), std::string::npos) << e.what();
  }
}

TEST(DataTokenizer, RejectsMergeOfUnknownTokens) {
  const auto dir = std::filesystem::temp_directory_path() / "trident_data_tokenizer_test";
  std::filesystem::create_directories(dir);
  nlohmann::json enc;
  for (int b = 0; b < 256; ++b) enc[bytes_to_unicode_token(std::string(1, static_cast<char>(b)))] = b;
  std::ofstream(dir / "encoder.json") << enc.dump();
  std::ofstream(dir / "vocab.bpe") << "#version: 0.2\na b\n";
  try {
    BpeTokenizer::from_dir(dir.string());
    FAIL() << "expected trident::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("vocab.bpe:2"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

std::vector<std::string> pieces(std::string_view s) {
  std::vector<std::string> out;
  for (auto p : pretokenize(s)) out.emplace_back(p);
  return out;
}

TEST(DataPreTokenizer, SplitsLikeGpt2Regex) {
  using V = std::vector<std::string>;
  EXPECT_EQ(pieces("Hello world"), (V{"Hello", " world"}));
  EXPECT_EQ(pieces("I'm here"), (V{"I", "'m", " here"}));
  EXPECT_EQ(pieces("a  b"), (V{"a", " ", " b"}));
  EXPECT_EQ(pieces("a   "), (V{"a", "   "}));
  EXPECT_EQ(pieces("a\n\nb"), (V{"a", "\n", "\n", "b"}));
  EXPECT_EQ(pieces("a\n\n b"), (V{"a", "\n\n", " b"}));
  EXPECT_EQ(pieces("x123 456"), (V{"x", "123", " 456"}));
  EXPECT_EQ(pieces("hi!!! ?"), (V{"hi", "!!!", " ?"}));
  EXPECT_EQ(pieces("'''s"), (V{"'''", "s"}));
  EXPECT_EQ(pieces("x\xe3\x80\x80\xe3\x80\x80y"), (V{"x", "\xe3\x80\x80", "\xe3\x80\x80", "y"}));
  EXPECT_EQ(pieces("caf\xc3\xa9 \xf0\x9f\x98\x80!"), (V{"caf\xc3\xa9", " \xf0\x9f\x98\x80!"}));
  EXPECT_EQ(pieces("a\xff\xfe b"), (V{"a", "\xff\xfe", " b"}));
}

TEST(DataUnicode, ClassesAndDecoding) {
  EXPECT_EQ(char_class('a'), CharClass::kLetter);
  EXPECT_EQ(char_class('7'), CharClass::kNumber);
  EXPECT_EQ(char_class(' '), CharClass::kSpace);
  EXPECT_EQ(char_class('\''), CharClass::kOther);
  EXPECT_EQ(char_class(0x4E2D), CharClass::kLetter);   // 中
  EXPECT_EQ(char_class(0x00B2), CharClass::kNumber);   // ²
  EXPECT_EQ(char_class(0x2167), CharClass::kNumber);   // Ⅷ (Nl)
  EXPECT_EQ(char_class(0x3000), CharClass::kSpace);    // ideographic space
  EXPECT_EQ(char_class(0x0301), CharClass::kOther);    // combining acute (Mn)
  EXPECT_EQ(char_class(0x1F600), CharClass::kOther);   // 😀
  EXPECT_EQ(char_class(kInvalidCodePoint), CharClass::kOther);
  EXPECT_EQ(decode_utf8("\xf0\x9f\x98\x80", 0).cp, 0x1F600u);
  EXPECT_EQ(decode_utf8("\xed\xa0\x80", 0).cp, kInvalidCodePoint);
  EXPECT_EQ(decode_utf8("\xe0\x80\x80", 0).cp, kInvalidCodePoint);
  for (int b = 0; b < 256; ++b) {
    const std::string one(1, static_cast<char>(b));
    EXPECT_EQ(unicode_token_to_bytes(bytes_to_unicode_token(one)), one);
  }
  EXPECT_EQ(bytes_to_unicode_token(" the"), "\xc4\xa0the");  // Ġthe
}

}  // namespace
}  // namespace trident::data
