// Per-step batch records; see batch_log.h.
#include "train/batch_log.h"

#include <filesystem>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/check.h"

namespace trident::train {

BatchLog::BatchLog(const std::string& path, bool lead, int64_t start_step) : path_(path) {
  if (path.empty() || !lead) return;
  const auto parent = std::filesystem::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  TRI_CHECK(!ec, "cannot create the folder {} for the batch log {}: {}", parent.string(), path, ec.message());
  out_.open(path, start_step > 0 ? std::ios::app : std::ios::trunc);
  TRI_CHECK(out_.good(), "cannot open the batch log {} for writing; check the directory exists and is writable",
            path);
}

void BatchLog::record(int64_t step, const data::BatchSampler& sampler) {
  if (!out_.is_open()) return;
  std::vector<int64_t> offsets(static_cast<std::size_t>(sampler.config().batch_size));
  for (std::size_t r = 0; r < offsets.size(); ++r) offsets[r] = sampler.row_offset(step, static_cast<int64_t>(r));
  out_ << nlohmann::json{{"step", step}, {"seq_len", sampler.config().seq_len}, {"offsets", offsets}}.dump() << "\n";
  out_.flush();
  TRI_CHECK(out_.good(), "writing the batch log {} failed (disk full?)", path_);
}

}  // namespace trident::train
