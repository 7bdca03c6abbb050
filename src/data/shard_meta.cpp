#include "data/shard_meta.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string_view>

#include "core/check.h"

namespace trident::data {

std::optional<std::string> shard_tokenizer(const std::string& prefix) {
  const std::string path = prefix + kShardMetaSuffix;
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return std::nullopt;
  std::ifstream in(path);
  TRI_CHECK(in.good(), "cannot read {} (the token shards' description written by trident prepare)", path);
  nlohmann::json meta = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  TRI_CHECK(!meta.is_discarded() && meta.is_object(),
            "{} is not a JSON object: it is written by trident prepare beside its shards; rerun prepare or "
            "remove the file", path);
  if (!meta.contains("tokenizer")) return std::nullopt;
  TRI_CHECK(meta["tokenizer"].is_string(), "{}: \"tokenizer\" must be a string such as \"gpt2\", got {}", path,
            meta["tokenizer"].dump());
  return meta["tokenizer"].get<std::string>();
}

std::optional<std::string> shard_file_tokenizer(const std::string& shard_path) {
  for (const std::string_view suffix : {"_train.bin", "_val.bin"}) {
    if (shard_path.size() > suffix.size() && shard_path.ends_with(suffix)) {
      return shard_tokenizer(shard_path.substr(0, shard_path.size() - suffix.size()));
    }
  }
  return std::nullopt;
}

void require_same_tokenizer(const std::string& checkpoint, const std::string& recorded, const std::string& source,
                            const std::string& found, const std::string& fix) {
  TRI_CHECK(recorded.empty() || recorded == found,
            "{} was trained on {} tokens (its config.json's trident_tokenizer) but {} {} tokens: the same ids "
            "would mean other text; {}", checkpoint, recorded, source, found, fix);
}

}  // namespace trident::data
