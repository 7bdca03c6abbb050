// What `trident prepare` records beside a pair of token shards: PREFIX_meta.json (data/prepare.h
// writes it). The engine reads one fact from it, the tokenizer, so a checkpoint can say which
// vocabulary its token ids belong to and `generate`/`eval` can refuse another one.
#pragma once
#include <optional>
#include <string>

namespace trident::data {

inline constexpr const char* kShardMetaSuffix = "_meta.json";

// The tokenizer ("gpt2", "cl100k") named by PREFIX_meta.json; nullopt when there is no such
// file (shards written by another tool, e.g. llm.c's). A meta file that is not JSON or whose
// "tokenizer" is not a string is an error naming the file.
std::optional<std::string> shard_tokenizer(const std::string& prefix);

// The same for one shard file, PREFIX_train.bin or PREFIX_val.bin (nullopt for other names).
std::optional<std::string> shard_file_tokenizer(const std::string& shard_path);

// The one refusal of token ids from another vocabulary: `checkpoint` was trained on `recorded`
// tokens (its config.json's trident_tokenizer) and `source` (shards, a shard, a --tokenizer
// flag) holds `found` tokens. An error naming both and `fix`, unless they agree or the
// checkpoint records none (then nothing can be said).
void require_same_tokenizer(const std::string& checkpoint, const std::string& recorded, const std::string& source,
                            const std::string& found, const std::string& fix);

}  // namespace trident::data
