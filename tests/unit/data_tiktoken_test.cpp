// cl100k's pre-tokenizer pieces, base64, tiktoken's BPE merge order on a small hand-made rank
// table, and the errors for rank files that are not what Trident implements. The whole real
// vocabulary is compared with js-tiktoken in tests/cli/tokenizer_cl100k_test.py.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/check.h"
#include "data/base64.h"
#include "data/pretokenizer_cl100k.h"
#include "data/tiktoken_tokenizer.h"
#include <nlohmann/json.hpp>

#include "../support/expect_error.h"
#include "../support/temp_dir.h"

namespace trident::data {
namespace {

std::vector<std::string> pieces(std::string_view text) {
  std::vector<std::string> out;
  for (size_t pos = 0; pos < text.size();) {
    const size_t end = cl100k_pretoken_end(text, pos);
    out.emplace_back(text.substr(pos, end - pos));
    pos = end;
  }
  return out;
}

using V = std::vector<std::string>;

TEST(Cl100kPretokenizer, Alternatives) {
  EXPECT_EQ(pieces("I'M here"), (V{"I", "'M", " here"}));      // contractions in any ASCII case
  EXPECT_EQ(pieces("12345 x"), (V{"123", "45", " x"}));         // at most three digits
  EXPECT_EQ(pieces("(word)"), (V{"(word", ")"}));               // one non-letter may lead letters
  EXPECT_EQ(pieces("\tTab"), (V{"\tTab"}));                     // ... a tab too, but not a newline
  EXPECT_EQ(pieces("\nLine"), (V{"\n", "Line"}));
  EXPECT_EQ(pieces(" !!\n\nx"), (V{" !!\n\n", "x"}));           // punctuation takes the line breaks after it
  EXPECT_EQ(pieces("a \n  b"), (V{"a", " \n", " ", " b"}));     // white space up to its last line break
  EXPECT_EQ(pieces("a   b"), (V{"a", "  ", " b"}));             // a run leaves its last space to the word
  EXPECT_EQ(pieces("end   "), (V{"end", "   "}));
  EXPECT_EQ(pieces(" 7"), (V{" ", "7"}));
}

TEST(Base64, Decode) {
  EXPECT_EQ(base64_decode("IQ=="), std::optional<std::string>("!"));
  EXPECT_EQ(base64_decode("IHRo"), std::optional<std::string>(" th"));
  EXPECT_EQ(base64_decode("aGk="), std::optional<std::string>("hi"));
  EXPECT_EQ(base64_decode(""), std::optional<std::string>(""));
  EXPECT_FALSE(base64_decode("abc"));
  EXPECT_FALSE(base64_decode("a*==") );
  EXPECT_FALSE(base64_decode("a=b="));
}

// A rank module in js-tiktoken's layout: every byte, then "ab" (256), "abc" (257), "bc" (258).
std::string write_ranks(const std::string& dir, const std::string& pattern, const std::string& extra) {
  std::string ranks = "! 0";
  auto b64 = [](std::string s) {
    static const char* k = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    for (size_t i = 0; i < s.size(); i += 3) {
      uint32_t v = static_cast<unsigned char>(s[i]) << 16;
      if (i + 1 < s.size()) v |= static_cast<unsigned char>(s[i + 1]) << 8;
      if (i + 2 < s.size()) v |= static_cast<unsigned char>(s[i + 2]);
      out += k[v >> 18], out += k[(v >> 12) & 63];
      out += i + 1 < s.size() ? k[(v >> 6) & 63] : '=';
      out += i + 2 < s.size() ? k[v & 63] : '=';
    }
    return out;
  };
  for (int b = 0; b < 256; ++b) ranks.append(" ").append(b64(std::string(1, static_cast<char>(b))));
  for (const char* tok : {"ab", "abc", "bc"}) ranks.append(" ").append(b64(tok));
  ranks.append(extra);
  nlohmann::json j = {{"pat_str", pattern}, {"special_tokens", {{"<|endoftext|>", 300}}}, {"bpe_ranks", ranks}};
  const std::string path = dir + "/ranks.js";
  std::ofstream(path) << "export default " << j.dump() << ";";
  return path;
}

const std::string kPattern =
    "('s|'S|'t|'T|'re|'rE|'Re|'RE|'ve|'vE|'Ve|'VE|'m|'M|'ll|'lL|'Ll|'LL|'d|'D)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
    "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

TEST(Tiktoken, MergesLowestRankFirst) {
  test::TempDir dir("tiktoken");
  TiktokenTokenizer t = TiktokenTokenizer::from_js_ranks(write_ranks(dir.path(), kPattern, ""));
  EXPECT_EQ(t.vocab_size(), 301);
  EXPECT_EQ(t.end_of_text(), 300);
  EXPECT_EQ(t.encode("abc"), (std::vector<int32_t>{257}));        // a whole piece that is a token
  // ab (256) merges before bc (258); then ab+c is abc (257), ranked before the last bc.
  EXPECT_EQ(t.encode("abcbc"), (std::vector<int32_t>{257, 258}));
  EXPECT_EQ(t.encode("bcab"), (std::vector<int32_t>{258, 256}));
  EXPECT_EQ(t.encode("xbc"), (std::vector<int32_t>{'x', 258}));
  EXPECT_EQ(t.decode(t.encode("abcbc zz")), "abcbc zz");
  EXPECT_ERROR_HAS(t.decode(std::vector<int32_t>{299}), "299");  // an unused id in the gap
}

TEST(Tiktoken, RejectsOtherPatternsAndMalformedRanks) {
  test::TempDir dir("tiktoken_bad");
  EXPECT_ERROR_HAS(TiktokenTokenizer::from_js_ranks(write_ranks(dir.path(), "\\w+", "")), "pattern");
  EXPECT_ERROR_HAS(TiktokenTokenizer::from_js_ranks(write_ranks(dir.path(), kPattern, " !!notbase64")),
                   "not base64");
  EXPECT_ERROR_HAS(TiktokenTokenizer::from_js_ranks(dir.path() + "/missing.js"), "fetch_assets.sh");
}

}  // namespace
}  // namespace trident::data
