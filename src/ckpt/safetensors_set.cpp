// SafetensorsSet: one model.safetensors or an HF index plus its shards, validated as a whole.
#include "ckpt/safetensors_set.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/check.h"

namespace trident::ckpt {

namespace fs = std::filesystem;

namespace {

std::string join_path(const std::string& dir, const std::string& name) {
  return (fs::path(dir) / name).string();
}

bool is_file(const std::string& path) {
  std::error_code ec;
  return fs::is_regular_file(path, ec);
}

// "'a', 'b', 'c' and 4 more": enough names to recognise a set without flooding the message.
std::string some_names(const std::vector<std::string>& names, std::size_t max = 3) {
  std::string out;
  for (std::size_t i = 0; i < names.size() && i < max; ++i) out += fmt::format("{}'{}'", i ? ", " : "", names[i]);
  if (names.size() > max) out += fmt::format(" and {} more", names.size() - max);
  return out;
}

// Shard names in an index are plain file names inside the model directory.
bool plain_file_name(const std::string& file) {
  return !file.empty() && file != "." && file != ".." && file.find('/') == std::string::npos &&
         file.find('\\') == std::string::npos;
}

constexpr const char* kRegenerate =
    "re-download the checkpoint, or save it again with save_pretrained (which writes the index and "
    "its shards together)";

}  // namespace

SafetensorsSet::SafetensorsSet(const std::string& dir) : dir_(dir) {
  std::error_code ec;
  TRI_CHECK(fs::is_directory(dir, ec), "'{}' is not a directory; pass the model directory holding {} or {}",
            dir, kSingleSafetensorsName, kSafetensorsIndexName);
  const std::string single = join_path(dir, kSingleSafetensorsName);
  const std::string index = join_path(dir, kSafetensorsIndexName);
  const bool has_single = is_file(single), has_index = is_file(index);
  TRI_CHECK(has_single || has_index,
            "no weights in '{}': it holds neither {} nor {} (a sharded checkpoint's index); point at "
            "the directory a Hugging Face model was saved or downloaded to",
            dir, kSingleSafetensorsName, kSafetensorsIndexName);
  if (has_single) {
    if (has_index) {
      warnings_.push_back(fmt::format(
          "'{}' holds both {} and {}; using {} and ignoring the index, as transformers' "
          "from_pretrained does (remove whichever is stale to silence this)",
          dir, kSingleSafetensorsName, kSafetensorsIndexName, kSingleSafetensorsName));
    }
    open_single(single);
  } else {
    open_index(index);
  }
}

void SafetensorsSet::open_single(const std::string& path) {
  shards_.emplace_back(path);
  for (const auto& t : shards_[0].tensors()) where_[t.name] = 0;
}

void SafetensorsSet::open_index(const std::string& path) {
  index_path_ = path;
  auto malformed = [&](const std::string& what) {
    return fmt::format("malformed safetensors index {}: {}; {}", path, what, kRegenerate);
  };
  nlohmann::json j;
  {
    std::ifstream in(path, std::ios::binary);
    TRI_CHECK(in.good(), "cannot read safetensors index {}; check its permissions", path);
    std::stringstream text;
    text << in.rdbuf();
    try {
      j = nlohmann::json::parse(text.str());
    } catch (const nlohmann::json::exception& e) {
      TRI_FAIL("{}", malformed(fmt::format("not valid JSON ({})", e.what())));
    }
  }
  TRI_CHECK(j.is_object(), "{}", malformed("the top level is not a JSON object"));
  TRI_CHECK(j.contains("weight_map"), "{}",
            malformed("no \"weight_map\" (the object mapping each tensor name to its shard file)"));
  const auto& map = j["weight_map"];
  TRI_CHECK(map.is_object(), "{}", malformed("\"weight_map\" is not an object {tensor name: shard file}"));
  TRI_CHECK(!map.empty(), "{}", malformed("\"weight_map\" lists no tensors"));

  // The index's view: shard file -> the tensors it should hold (std::map: file-name order,
  // which for model-0000N-of-0000M is shard order).
  std::map<std::string, std::vector<std::string>> listed;
  for (auto it = map.begin(); it != map.end(); ++it) {
    TRI_CHECK(it.value().is_string(), "{}",
              malformed(fmt::format("the shard of tensor '{}' is {}, not a file name", it.key(), it.value().dump())));
    const std::string file = it.value().get<std::string>();
    TRI_CHECK(plain_file_name(file), "{}",
              malformed(fmt::format("the shard of tensor '{}' is '{}'; shards must be plain file names "
                                    "inside the model directory", it.key(), file)));
    listed[file].push_back(it.key());
  }

  if (j.contains("metadata")) {
    const auto& meta = j["metadata"];
    TRI_CHECK(meta.is_object() || meta.is_null(), "{}", malformed("\"metadata\" is not an object"));
    if (meta.is_object() && meta.contains("total_size")) {
      TRI_CHECK(meta["total_size"].is_number_unsigned(), "{}",
                malformed(fmt::format("metadata.total_size is {}, not a non-negative integer",
                                      meta["total_size"].dump())));
    }
  }

  for (const auto& [file, names] : listed) {
    const std::string shard_path = join_path(dir_, file);
    TRI_CHECK(is_file(shard_path),
              "the safetensors index {} names shard '{}' (for {} tensor(s): {}) but {} does not exist; the "
              "download is incomplete: fetch the missing shard into '{}' or re-download the checkpoint",
              path, file, names.size(), some_names(names), shard_path, dir_);
    try {
      shards_.emplace_back(shard_path);
    } catch (const Error& e) {
      TRI_FAIL("shard '{}' named by the safetensors index {} cannot be read: {}; re-download that shard",
               file, path, e.what());
    }
  }

  // The shards' view: tensor name -> every shard holding it. Duplicates first: they also
  // explain a "not in its shard" below if the index points at the other copy.
  std::map<std::string, std::vector<std::size_t>> found;
  for (std::size_t s = 0; s < shards_.size(); ++s) {
    for (const auto& t : shards_[s].tensors()) found[t.name].push_back(s);
  }
  for (const auto& [name, in] : found) {
    if (in.size() < 2) continue;
    const std::string says = map.contains(name) ? map[name].get<std::string>() : std::string("nothing");
    TRI_FAIL("tensor '{}' is in two shards, {} and {} (the index {} says '{}'); which copy is meant cannot "
             "be told (the directory mixes files from different saves): {}",
             name, shards_[in[0]].path(), shards_[in[1]].path(), path, says, kRegenerate);
  }
  std::size_t s = 0;
  std::uint64_t listed_bytes = 0;
  for (const auto& [file, names] : listed) {
    const SafetensorsReader& shard = shards_[s];
    for (const auto& name : names) {
      const auto hit = found.find(name);
      if (hit == found.end()) {
        const auto close = close_names(name, shard.names());
        TRI_FAIL("tensor '{}' is listed in the safetensors index {} under shard '{}', but no shard holds it "
                 "({} has {} tensors{}); the index and the shards come from different saves: {}",
                 name, path, file, shard.path(), shard.tensors().size(),
                 close.empty() ? std::string() : fmt::format("; close names: {}", fmt::join(close, ", ")),
                 kRegenerate);
      }
      TRI_CHECK(hit->second[0] == s,
                "tensor '{}' is listed in the safetensors index {} under shard '{}', but it is in {} instead; the "
                "index and the shards come from different saves: {}",
                name, path, file, shards_[hit->second[0]].path(), kRegenerate);
      where_[name] = s;
      const auto& info = shard.info(name);
      listed_bytes += info.end - info.begin;
    }
    ++s;
  }
  for (std::size_t i = 0; i < shards_.size(); ++i) {
    std::vector<std::string> extra;
    for (const auto& t : shards_[i].tensors()) {
      if (!where_.count(t.name)) extra.push_back(t.name);
    }
    TRI_CHECK(extra.empty(),
              "shard {} holds {} tensor(s) the safetensors index {} does not list: {}; the index and the shards "
              "disagree (files from two saves mixed?), so Trident will not guess which is right: {}",
              shards_[i].path(), extra.size(), path, some_names(extra), kRegenerate);
  }

  if (j.contains("metadata") && j["metadata"].is_object() && j["metadata"].contains("total_size")) {
    const auto total = j["metadata"]["total_size"].get<std::uint64_t>();
    if (total != listed_bytes) {
      warnings_.push_back(fmt::format("the safetensors index {} gives metadata.total_size {} but its tensors "
                                      "hold {} bytes; the total is not used, loading continues",
                                      path, total, listed_bytes));
    }
  }
}

std::vector<TensorInfo> SafetensorsSet::tensors() const {
  std::vector<TensorInfo> out;
  out.reserve(where_.size());
  for (const auto& shard : shards_) out.insert(out.end(), shard.tensors().begin(), shard.tensors().end());
  return out;
}

std::vector<std::string> SafetensorsSet::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& shard : shards_) {
    for (const auto& t : shard.tensors()) out.push_back(t.name);
  }
  return out;
}

const SafetensorsReader& SafetensorsSet::shard_of(const std::string& name) const {
  const auto it = where_.find(name);
  if (it == where_.end()) {
    const auto close = close_names(name, names());
    TRI_FAIL("tensor '{}' not found in {} ({} tensors in {}){}", name, dir_, where_.size(),
             sharded() ? fmt::format("{} shards listed by {}", shards_.size(), index_path_)
                       : std::string(shards_[0].path()),
             close.empty() ? std::string() : fmt::format("; close names: {}", fmt::join(close, ", ")));
  }
  return shards_[it->second];
}

const TensorInfo& SafetensorsSet::info(const std::string& name) const { return shard_of(name).info(name); }

void SafetensorsSet::read(const std::string& name, const Shape& expected_shape, float* dst) const {
  shard_of(name).read(name, expected_shape, dst);
}

std::vector<float> SafetensorsSet::get(const std::string& name, const Shape& expected_shape) const {
  return shard_of(name).get(name, expected_shape);
}

std::span<const std::byte> SafetensorsSet::raw(const std::string& name) const { return shard_of(name).raw(name); }

void SafetensorsSet::read_range(const std::string& name, const Shape& expected_shape, std::int64_t begin,
                                std::int64_t count, float* dst) const {
  shard_of(name).read_range(name, expected_shape, begin, count, dst);
}

std::uint64_t SafetensorsSet::bytes_read() const {
  std::uint64_t n = 0;
  for (const auto& shard : shards_) n += shard.bytes_read();
  return n;
}

void SafetensorsSet::checksum_reads() const {
  for (const auto& shard : shards_) shard.checksum_reads();
}

}  // namespace trident::ckpt
