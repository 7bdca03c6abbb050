// `trident`: dispatches to the subcommands. Any error is printed once per rank that knows it
// and ends the whole MPI job (no rank is left waiting in a collective).
#include <fmt/format.h>

#include <cstring>
#include <exception>
#include <string>

#include "cli/commands.h"
#include "comm/communicator.h"

namespace {

struct Command {
  const char* name;
  int (*run)(int, char**);
  const char* summary;
};

constexpr Command kCommands[] = {
    {"prepare", trident::cli::run_prepare, "tokenize text into token shards (PREFIX_train.bin, PREFIX_val.bin)"},
    {"train", trident::cli::run_train, "train a model: GPT-2, Llama or Mixtral (single process, or dp x tp x pp x ep under mpirun)"},
    {"generate", trident::cli::run_generate, "generate text from a checkpoint (fp32 or quantized; KV cache)"},
    {"eval", trident::cli::run_eval, "validation loss / perplexity of a checkpoint (fp32 or quantized) on a token shard"},
    {"quantize", trident::cli::run_quantize, "quantize a checkpoint's layer matrices to int8 or q4 (weight-only)"},
    {"dequantize", trident::cli::run_dequantize, "write a quantized checkpoint back as fp32 (the values it computes with)"},
    {"merge-lora", trident::cli::run_merge_lora, "merge a LoRA run's adapters into its base: a full checkpoint"},
    {"ckpt", trident::cli::run_ckpt, "inspect checkpoints: trident ckpt info DIR"},
    {"bench", trident::cli::run_bench, "benchmarks: trident bench comm (under mpirun), trident bench decode"},
    {"plan", trident::cli::run_plan, "predict memory and step time of every dp x tp x pp layout, ranked"},
};

void print_usage() {
  fmt::print("usage: trident <command> [options]   (trident <command> --help for its options)\n\ncommands:\n");
  for (const Command& c : kCommands) fmt::print("  {:<10} {}\n", c.name, c.summary);
  fmt::print("\nMulti-rank runs: scripts/trident-mpirun -n N build/trident train --dp ... (see README)\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") ||
      !std::strcmp(argv[1], "help")) {
    print_usage();
    return argc < 2 ? 2 : 0;
  }
  for (const Command& c : kCommands) {
    if (std::strcmp(argv[1], c.name) != 0) continue;
    try {
      return c.run(argc - 1, argv + 1);
    } catch (const std::exception& e) {
      trident::comm::abort_job(e.what(), 1);
    }
  }
  fmt::print(stderr, "trident: unknown command '{}'\n\n", argv[1]);
  print_usage();
  return 2;
}
