// Where data assets live: scripts/fetch_assets.sh downloads them under <repo>/data/assets/.
// Helpers to find that folder from a path inside the repository (a test's TRIDENT_SOURCE_DIR, the
// binary's location or the working directory).
#pragma once

#include <string>

namespace trident::data {

// Walks up from start (a file or a folder) to the first folder holding scripts/fetch_assets.sh;
// throws trident::Error when there is none.
std::string find_repo_root(const std::string& start);

// <repo>/data/assets/<relative>, checking that it exists; the error tells the user to run
// scripts/fetch_assets.sh.
std::string asset_path(const std::string& repo_root, const std::string& relative);

// A default asset path such as "data/assets/gpt2": as given when it exists from the working
// directory, else the same path under the repository that holds the running binary
// (build/trident inside a checkout), so the defaults work from any directory. Returns the
// path unchanged when neither exists (the caller's error then names it).
std::string resolve_default_asset(const std::string& relative_path);

}  // namespace trident::data
