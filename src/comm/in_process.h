// In-process communication: N ranks as N threads of one process, each with a world
// Communicator over a shared-memory backend, as gloo's own tests do. It gives the reducer, the
// pipeline executor and expert-parallel dispatch unit tests that need no mpirun. Every
// guarantee of the Communicator (issue order, Work, debug signatures, the watchdog) is the
// Communicator's own code, shared with MPI; only the transport differs:
//   - collectives meet per group and call number; each rank computes its result from every
//     rank's buffer, reductions in rank order 0, 1, ..., N-1 (deterministic; equal to MPI's
//     result whenever the sum is exact, as for the tests' small integers);
//   - send copies into a mailbox keyed (source, destination, tag) and completes at once; recv
//     takes that mailbox's messages in posting order;
//   - split(color, key) makes sub-groups as MPI_Comm_split does.
#pragma once

#include <functional>

#include "comm/communicator.h"

namespace trident::comm {

// Runs fn(world) on `ranks` threads, each with its own world Communicator (group "world") over
// one in-process world, and joins them. When a rank throws, the others' pending and later
// communication fails instead of waiting for it; after the join, the exception of the lowest
// rank that failed on its own (not because another failed) is rethrown.
void run_in_process(int ranks, const std::function<void(Communicator& world)>& fn,
                    CommOptions options = CommOptions::from_env());

}  // namespace trident::comm
