// Where data assets live: scripts/fetch_assets.sh downloads them under <repo>/data/assets/.
// Helpers to find that folder from a path inside the repository (a test's __FILE__, the
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

}  // namespace trident::data
