// Jane Austen's six novels, read from Debian's r-cran-janeaustenr 1.0.0-1 (data/Rdata.rdb,
// fetched by scripts/fetch_assets.sh) and pinned by sha256. Each novel is its lines joined by
// '\n' (no trailing newline), exactly as the R package stores them.
#pragma once

#include <string>
#include <vector>

namespace trident::data {

struct NovelText {
  std::string key;    // the R object name, e.g. "persuasion"
  std::string title;  // e.g. "Persuasion"
  std::string text;
};

struct JaneAustenNovel {
  const char* key;
  const char* title;
  const char* sha256;  // of the extracted text
};

// The six novels in publication order; Persuasion (last) is the conventional held-out one.
const std::vector<JaneAustenNovel>& jane_austen_novels();
inline constexpr const char* kJaneAustenHeldOut = "persuasion";
inline constexpr const char* kJaneAustenDefaultRdb = "data/assets/janeaustenr/data/Rdata.rdb";

// Extracts all six novels from rdb_path (Rdata.rdx beside it), checking each checksum; throws
// trident::Error naming the file when something is missing or differs.
std::vector<NovelText> load_jane_austen(const std::string& rdb_path);

}  // namespace trident::data
