// Locating the repository root and its data/assets folder.
#include "data/assets.h"

#include <filesystem>

#include "core/check.h"

namespace trident::data {

std::string find_repo_root(const std::string& start) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path dir = fs::absolute(fs::path(start), ec);
  TRI_CHECK(!ec, "cannot resolve path '{}': {}", start, ec.message());
  if (!fs::is_directory(dir, ec)) dir = dir.parent_path();
  for (fs::path p = dir; !p.empty(); p = p.parent_path()) {
    if (fs::exists(p / "scripts" / "fetch_assets.sh", ec)) return p.string();
    if (p == p.parent_path()) break;
  }
  TRI_FAIL("no Trident repository (a folder holding scripts/fetch_assets.sh) above '{}'", start);
}

std::string asset_path(const std::string& repo_root, const std::string& relative) {
  const std::filesystem::path p = std::filesystem::path(repo_root) / "data" / "assets" / relative;
  std::error_code ec;
  TRI_CHECK(std::filesystem::exists(p, ec), "missing data asset {}: run {}/scripts/fetch_assets.sh to download it",
            p.string(), repo_root);
  return p.string();
}

std::string resolve_default_asset(const std::string& relative_path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::exists(relative_path, ec) || fs::path(relative_path).is_absolute()) return relative_path;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return relative_path;
  try {
    const fs::path candidate = fs::path(find_repo_root(exe.string())) / relative_path;
    if (fs::exists(candidate, ec)) return candidate.string();
  } catch (const Error&) {
    // The binary is not inside a checkout: keep the relative path.
  }
  return relative_path;
}

}  // namespace trident::data
