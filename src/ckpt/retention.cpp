// Removing interrupted saves and old checkpoints (see retention.h).
#include "ckpt/retention.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <regex>
#include <utility>

#include "ckpt/atomic_file.h"
#include "ckpt/checkpoint.h"

namespace fs = std::filesystem;

namespace trident::ckpt {

std::vector<std::string> remove_interrupted_saves(const std::string& root) {
  // The names StagedDirectory, AtomicFile and prune_step_dirs give their work in progress.
  static const std::regex leftover(
      R"(^(\.step_[0-9]+\.tmp|step_[0-9]+\.old-[0-9]+|\.step_[0-9]+\.deleting|\..+\.tmp-[0-9]+)$)");
  std::vector<std::string> removed;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    if (!std::regex_match(name, leftover)) continue;
    remove_tree_quietly(entry.path().string());
    removed.push_back(name);
  }
  std::sort(removed.begin(), removed.end());
  return removed;
}

std::vector<std::string> prune_step_dirs(const std::string& root, int keep_last) {
  if (keep_last <= 0) return {};
  std::vector<std::pair<std::int64_t, std::string>> steps;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    const std::int64_t step = step_from_dir_name(name);
    if (step >= 0 && entry.is_directory(ec)) steps.emplace_back(step, name);
  }
  std::sort(steps.begin(), steps.end());
  const std::int64_t latest = latest_step(root);
  std::vector<std::string> removed;
  const size_t old = steps.size() > static_cast<size_t>(keep_last) ? steps.size() - keep_last : 0;
  for (size_t i = 0; i < old; ++i) {
    const auto& [step, name] = steps[i];
    if (step == latest) continue;
    // Renamed first, so a crash mid-removal leaves a leftover the next start-up removes, never
    // a step directory with some of its files gone.
    const fs::path doomed = fs::path(root) / ("." + name + ".deleting");
    fs::rename(fs::path(root) / name, doomed, ec);
    if (ec) continue;  // best effort: an old checkpoint that stays is harmless
    remove_tree_quietly(doomed.string());
    removed.push_back(name);
  }
  return removed;
}

}  // namespace trident::ckpt
