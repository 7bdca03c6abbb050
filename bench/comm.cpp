// build/bench/comm: nccl-tests style bandwidth of Trident's collectives vs raw MPI; the same
// code as `trident bench comm` (src/cli/cmd_bench_comm.cpp).
// Usage: scripts/trident-mpirun -n 2 build/bench/comm [--max-bytes 256M] [--min-bytes 1K]
#include <exception>

#include "cli/commands.h"
#include "comm/communicator.h"

int main(int argc, char** argv) {
  try {
    return trident::cli::run_bench_comm(argc, argv);
  } catch (const std::exception& e) {
    trident::comm::abort_job(e.what(), 1);
  }
}
