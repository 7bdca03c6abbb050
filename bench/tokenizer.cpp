// Tokenizer throughput: encodes a text file (default: the Jane Austen training text if
// prepared, else a synthetic mix) single-threaded and prints MB/s, cold (empty cache) and warm.
// Usage: build/bench/tokenizer [FILE] [--assets DIR]
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "core/check.h"
#include "core/timer.h"
#include "data/assets.h"
#include "data/bpe_tokenizer.h"

int main(int argc, char** argv) {
  try {
    std::string file, assets;
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--assets" && i + 1 < argc) {
        assets = argv[++i];
      } else {
        file = a;
      }
    }
    if (assets.empty()) {
      assets = trident::data::asset_path(trident::data::find_repo_root(__FILE__), "gpt2");
    }
    std::string text;
    if (!file.empty()) {
      std::ifstream in(file, std::ios::binary);
      TRI_CHECK(in.good(), "cannot open {}", file);
      std::ostringstream ss;
      ss << in.rdbuf();
      text = ss.str();
    } else {
      // ~8 MB of varied prose, code, numbers and unicode, repeated with changing numbers so the
      // cache sees new pieces too.
      const std::string base =
          "It is a truth universally acknowledged, that a single man in possession of a good "
          "fortune, must be in want of a wife.\n\n  for (int i = 0; i < n; ++i) { sum += a[i]; }\n"
          "Caf\xc3\xa9 cr\xc3\xa8me, na\xc3\xafve r\xc3\xa9sum\xc3\xa9 \xe2\x80\x94 \xe4\xbd\xa0\xe5\xa5\xbd "
          "\xf0\x9f\x98\x80! She'll say it's 42% of $3.50...\n";
      for (int i = 0; text.size() < 8'000'000; ++i) text += base + std::to_string(i * 7919) + " ";
    }
    auto tok = trident::data::BpeTokenizer::from_dir(assets);
    trident::Stopwatch sw;
    auto ids = tok.encode(text);
    const double cold = sw.seconds();
    sw.restart();
    ids = tok.encode(text);
    const double warm = sw.seconds();
    const double mb = static_cast<double>(text.size()) / 1e6;
    std::printf("bytes %zu  tokens %zu  bytes/token %.2f\n", text.size(), ids.size(),
                static_cast<double>(text.size()) / static_cast<double>(ids.size()));
    std::printf("encode cold (empty cache): %.2f MB/s\n", mb / cold);
    std::printf("encode warm (filled cache): %.2f MB/s\n", mb / warm);
    sw.restart();
    const std::string back = tok.decode(ids);
    std::printf("decode: %.2f MB/s\n", mb / sw.seconds());
    TRI_CHECK(back == text, "round trip failed");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
