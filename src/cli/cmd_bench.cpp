// `trident bench <what>`: benchmarks reachable from the main binary.
#include <fmt/format.h>

#include <cstring>

#include "cli/commands.h"

namespace trident::cli {

int run_bench(int argc, char** argv) {
  if (argc >= 2 && !std::strcmp(argv[1], "comm")) return run_bench_comm(argc - 1, argv + 1);
  if (argc >= 2 && !std::strcmp(argv[1], "decode")) return run_bench_decode(argc - 1, argv + 1);
  fmt::print(stderr,
             "usage: trident bench comm [--max-bytes N]   (run under scripts/trident-mpirun -n N)\n"
             "       trident bench decode [--models gpt2,llama-small] [--formats fp32,int8,q4]\n"
             "other benchmarks are separate programs in build/bench/ (see README)\n");
  return 2;
}

}  // namespace trident::cli
