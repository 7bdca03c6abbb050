// `trident prepare`: text files (or the built-in Jane Austen corpus) -> GPT-2 token shards.
// The work is data::prepare(); this file only parses arguments and prints the summary.
#include <CLI/CLI.hpp>

#include <fmt/format.h>

#include <iostream>

#include "cli/cli11_errors.h"
#include "cli/commands.h"
#include "data/janeausten.h"
#include "data/prepare.h"

namespace trident::cli {

int run_prepare(int argc, char** argv) {
  data::PrepareOptions opt;
  CLI::App app{
      "Tokenize text into llm.c token shards PREFIX_train.bin and PREFIX_val.bin (+ PREFIX_meta.json).\n"
      "Every document (input file, or novel) is preceded by <|endoftext|> (gpt2: 50256, cl100k: 100257).\n"
      "Vocabularies beyond 65,536 ids (cl100k) are written as 32-bit shards.",
      "trident prepare"};
  app.add_option("--input", opt.inputs, "Text files, one document each");
  app.add_option("--out", opt.out_prefix, "Output prefix, e.g. data/janeausten")->required();
  app.add_option("--val-fraction", opt.val_fraction,
                 "With --input: the last fraction of the token stream that becomes the validation split")
      ->capture_default_str();
  app.add_option("--corpus", opt.corpus,
                 "Built-in corpus instead of --input: 'janeausten' (six novels, Persuasion held out for validation)")
      ->check(CLI::IsMember({"janeausten"}));
  app.add_option("--rdb", opt.rdb,
                 fmt::format("janeausten: r-cran-janeaustenr's Rdata.rdb (default {})", data::kJaneAustenDefaultRdb));
  app.add_option("--tokenizer", opt.tokenizer,
                 "gpt2 (GPT-2's BPE, 50,257 ids) or cl100k (OpenAI's cl100k_base, 100,277 ids), or a folder holding "
                 "GPT-2's encoder.json + vocab.bpe or cl100k_base.js")
      ->capture_default_str();
  bool quiet = false;
  app.add_flag("--quiet", quiet, "No progress bar");
  if (const std::optional<int> rc = parse_command_line(app, argc, argv)) return *rc;
  opt.progress = !quiet;
  const auto r = data::prepare(opt, std::cerr);
  std::cout << fmt::format(
      "train: {} tokens in {} documents -> {}\n"
      "val:   {} tokens in {} documents -> {}\n"
      "unigram entropy: train {:.4f} nats, val {:.4f} nats; val cross-entropy under train unigram {:.4f} nats\n"
      "({:.1f} MB in {:.1f}s)\n",
      r.train.tokens, r.train.documents, r.train.path, r.val.tokens, r.val.documents, r.val.path,
      r.train.unigram_entropy_nats, r.val.unigram_entropy_nats, r.val_cross_entropy_under_train_unigram_nats,
      static_cast<double>(r.input_bytes) / 1e6, r.seconds);
  return 0;
}

}  // namespace trident::cli
