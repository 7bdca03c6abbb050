// `trident prepare` as a library call: tokenizes text documents (GPT-2's BPE or cl100k_base)
// and writes PREFIX_train.bin / PREFIX_val.bin token shards (llm.c format; 32-bit tokens when
// the vocabulary exceeds 65,536 ids) plus PREFIX_meta.json with the counts and unigram
// entropies. Each document is preceded by the tokenizer's <|endoftext|>, as llm.c does, so
// documents are separated by it. Argument parsing is left to src/cli/cmd_prepare.cpp.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <span>
#include <string>
#include <vector>

namespace trident::data {

struct PrepareOptions {
  std::vector<std::string> inputs;  // text files, one document each (ignored for a named corpus)
  std::string out_prefix;           // writes <out_prefix>_train.bin, _val.bin, _meta.json
  double val_fraction = 0.1;        // inputs: the last fraction of the token stream goes to val
  std::string corpus;               // "" (use inputs) or "janeausten" (Persuasion held out)
  std::string rdb;                  // janeausten: path of Rdata.rdb; default kJaneAustenDefaultRdb
  std::string tokenizer = "gpt2";     // a name (gpt2, cl100k) or a folder: see data/tokenizer.h
  bool progress = true;             // progress bar on the log stream (\r when it is a terminal)
};

struct SplitStats {
  std::string path;
  int64_t tokens = 0;
  int64_t documents = 0;                // documents starting in this split
  double unigram_entropy_nats = 0.0;    // entropy of the split's own token frequencies
};

struct PrepareResult {
  SplitStats train, val;
  // Cross-entropy of val under train's unigram distribution (add-one smoothed): the loss of
  // the best model that ignores context, the number a trained model must beat.
  double val_cross_entropy_under_train_unigram_nats = 0.0;
  int64_t input_bytes = 0;
  double seconds = 0.0;
};

// Runs the whole preparation; progress and notes go to log (std::cerr from the CLI). Throws
// trident::Error on bad options or inputs.
PrepareResult prepare(const PrepareOptions& options, std::ostream& log);

// Shannon entropy, in nats, of the empirical distribution of tokens (0 for no tokens).
double unigram_entropy_nats(std::span<const int32_t> tokens);

}  // namespace trident::data
