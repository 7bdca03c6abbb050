// Text -> token shards for `trident prepare`; see prepare.h.
#include "data/prepare.h"
#include "data/shard_meta.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "core/check.h"
#include "core/timer.h"
#include "data/tokenizer.h"
#include "data/assets.h"
#include "data/janeausten.h"
#include "data/progress.h"
#include "data/token_shard.h"

namespace trident::data {
namespace {

struct Document {
  std::string name;
  std::string text;
  bool val = false;  // named corpora decide the split per document
};

std::string read_input(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TRI_CHECK(in.good(), "cannot read input file {}: {}", path, std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Occurrences of each id, indexed by id (ids are non-negative; the size follows the largest).
std::vector<int64_t> counts_of(std::span<const int32_t> tokens) {
  const int32_t max_id = tokens.empty() ? 0 : *std::max_element(tokens.begin(), tokens.end());
  std::vector<int64_t> counts(static_cast<size_t>(max_id) + 1, 0);
  for (int32_t t : tokens) ++counts[static_cast<size_t>(t)];
  return counts;
}

int64_t count_documents(std::span<const int32_t> tokens, int32_t separator) {
  return std::count(tokens.begin(), tokens.end(), separator);
}

}  // namespace

double unigram_entropy_nats(std::span<const int32_t> tokens) {
  if (tokens.empty()) return 0.0;
  const auto counts = counts_of(tokens);
  const double n = static_cast<double>(tokens.size());
  double h = 0.0;
  for (int64_t c : counts) {
    if (c > 0) h -= (static_cast<double>(c) / n) * std::log(static_cast<double>(c) / n);
  }
  return h;
}

PrepareResult prepare(const PrepareOptions& options, std::ostream& log) {
  Stopwatch clock;
  TRI_CHECK(!options.out_prefix.empty(), "prepare needs --out PREFIX (it writes PREFIX_train.bin and PREFIX_val.bin)");
  TRI_CHECK(options.corpus.empty() || options.corpus == "janeausten",
            "unknown corpus '{}': the built-in corpus is 'janeausten' (or give text files with --input)", options.corpus);
  std::vector<Document> docs;
  if (options.corpus == "janeausten") {
    TRI_CHECK(options.inputs.empty(), "--corpus janeausten brings its own text; drop --input (or drop --corpus)");
    const std::string rdb = options.rdb.empty() ? resolve_default_asset(kJaneAustenDefaultRdb) : options.rdb;
    for (auto& novel : load_jane_austen(rdb)) {
      const bool val = novel.key == kJaneAustenHeldOut;
      docs.push_back({novel.title, std::move(novel.text), val});
    }
    log << "prepare: Jane Austen's six novels from " << rdb << "; " << jane_austen_novels().back().title
        << " held out for validation\n";
  } else {
    TRI_CHECK(!options.inputs.empty(), "prepare needs --input FILE... (text files) or --corpus janeausten");
    TRI_CHECK(options.val_fraction >= 0.0 && options.val_fraction < 1.0,
              "--val-fraction must be in [0, 1), got {}", options.val_fraction);
    for (const auto& path : options.inputs) docs.push_back({path, read_input(path), false});
  }

  const std::unique_ptr<Tokenizer> tokenizer = load_tokenizer(options.tokenizer);
  const int32_t separator = tokenizer->end_of_text();
  int64_t total_bytes = 0;
  for (const auto& d : docs) total_bytes += static_cast<int64_t>(d.text.size());
  ProgressBar bar(log, "prepare: tokenizing", total_bytes, stderr_is_tty() && &log == &std::cerr, options.progress);
  std::vector<int32_t> train, val;
  int64_t done = 0;
  constexpr size_t kChunk = size_t{1} << 20;
  for (const auto& d : docs) {
    auto& out = d.val ? val : train;
    out.push_back(separator);  // llm.c's convention: every document starts with it
    for (size_t pos = 0; pos < d.text.size();) {
      const size_t next = tokenizer->encode_chunk(d.text, pos, kChunk, &out);
      done += static_cast<int64_t>(next - pos);
      pos = next;
      bar.update(done);
    }
  }
  bar.finish();

  if (options.corpus.empty()) {
    // Plain inputs: the last val_fraction of the token stream is the validation split.
    const auto n_val = static_cast<size_t>(std::llround(static_cast<double>(train.size()) * options.val_fraction));
    TRI_CHECK(options.val_fraction == 0.0 || n_val > 0,
              "the inputs hold only {} tokens, too few to hold out a fraction {} for validation", train.size(),
              options.val_fraction);
    val.assign(train.end() - static_cast<ptrdiff_t>(n_val), train.end());
    train.resize(train.size() - n_val);
  }

  PrepareResult result;
  result.input_bytes = total_bytes;
  result.train.path = options.out_prefix + "_train.bin";
  result.val.path = options.out_prefix + "_val.bin";
  const auto parent = std::filesystem::path(options.out_prefix).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
    TRI_CHECK(!ec, "cannot create output folder {}: {}", parent.string(), ec.message());
  }
  const int token_bytes = token_bytes_for_vocab(tokenizer->vocab_size());
  write_token_shard(result.train.path, train, token_bytes);
  write_token_shard(result.val.path, val, token_bytes);
  result.train.tokens = static_cast<int64_t>(train.size());
  result.val.tokens = static_cast<int64_t>(val.size());
  result.train.documents = count_documents(train, separator);
  result.val.documents = count_documents(val, separator);
  result.train.unigram_entropy_nats = unigram_entropy_nats(train);
  result.val.unigram_entropy_nats = unigram_entropy_nats(val);
  if (!val.empty()) {
    const auto train_counts = counts_of(train);
    const double denom = static_cast<double>(train.size()) + tokenizer->vocab_size();
    double ce = 0.0;
    for (int32_t t : val) {
      const double c = static_cast<size_t>(t) < train_counts.size() ? static_cast<double>(train_counts[static_cast<size_t>(t)]) : 0.0;
      ce -= std::log((c + 1.0) / denom);
    }
    result.val_cross_entropy_under_train_unigram_nats = ce / static_cast<double>(val.size());
  }
  result.seconds = clock.seconds();

  nlohmann::json meta = {
      {"format", token_bytes == 2 ? "llm.c token shards (magic 20240520, version 1, uint16 tokens)"
                                  : "llm.c token shards (magic 20240801, version 7, uint32 tokens)"},
      {"tokenizer", tokenizer->name()},
      {"vocab_size", tokenizer->vocab_size()},
      {"document_separator", separator},
      {"corpus", options.corpus.empty() ? nlohmann::json(options.inputs) : nlohmann::json(options.corpus)},
      {"input_bytes", total_bytes},
      {"train", {{"path", result.train.path}, {"tokens", result.train.tokens}, {"documents", result.train.documents},
                 {"unigram_entropy_nats", result.train.unigram_entropy_nats}}},
      {"val", {{"path", result.val.path}, {"tokens", result.val.tokens}, {"documents", result.val.documents},
               {"unigram_entropy_nats", result.val.unigram_entropy_nats},
               {"cross_entropy_under_train_unigram_nats", result.val_cross_entropy_under_train_unigram_nats}}},
  };
  const std::string meta_path = options.out_prefix + kShardMetaSuffix;
  std::ofstream(meta_path) << meta.dump(2) << '\n';
  return result;
}

}  // namespace trident::data
