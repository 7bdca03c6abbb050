// Extraction of the Jane Austen corpus from r-cran-janeaustenr's lazy-load database.
#include "data/janeausten.h"

#include "core/check.h"
#include "data/rdata_reader.h"
#include "data/sha256.h"

namespace trident::data {

const std::vector<JaneAustenNovel>& jane_austen_novels() {
  // Checksums computed once from r-cran-janeaustenr_1.0.0-1_all.deb (and cross-checked with an
  // independent Python reading of the same file).
  static const std::vector<JaneAustenNovel> novels = {
      {"sensesensibility", "Sense & Sensibility", "0996d90842bbe8093f3b8142c1e77d1b20cff52d1d0615f3ed67733653e74e26"},
      {"prideprejudice", "Pride & Prejudice", "2e44edaa4946d64ad541c68e0224f5d672f43bf3ce2a8a0b0637ad5e02fc6eb3"},
      {"mansfieldpark", "Mansfield Park", "e0e9ef3863ea77f51f6070062ee0dd50ad9b933223880617629e4e4963ea40ff"},
      {"emma", "Emma", "dd08b340a56ad4a0a00718d5682528a5a5886ae0aef91c9e0fa528074fa64b75"},
      {"northangerabbey", "Northanger Abbey", "8618a5acf5be50cc6e9b7680c7469fb6012649ab08c709dfc63c6367989fd31d"},
      {"persuasion", "Persuasion", "726513a6c18bb678427bcbcf7c72d0d20816a67c25b0471b26ddcabf3ebac140"},
  };
  return novels;
}

std::vector<NovelText> load_jane_austen(const std::string& rdb_path) {
  std::vector<NovelText> out;
  for (const auto& novel : jane_austen_novels()) {
    const auto lines = read_rdb_character_vector(rdb_path, novel.key);
    std::string text;
    for (size_t i = 0; i < lines.size(); ++i) {
      if (i > 0) text.push_back('\n');
      text += lines[i];
    }
    const std::string digest = sha256_hex(text);
    TRI_CHECK(digest == novel.sha256,
              "{}: the text of {} ('{}') has sha256 {}, expected {}. This is not r-cran-janeaustenr 1.0.0-1's data; "
              "delete data/assets/janeaustenr and re-run scripts/fetch_assets.sh",
              rdb_path, novel.title, novel.key, digest, novel.sha256);
    out.push_back({novel.key, novel.title, std::move(text)});
  }
  return out;
}

}  // namespace trident::data
