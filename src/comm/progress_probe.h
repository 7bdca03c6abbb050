// Measures whether this rank's point-to-point sends need this rank inside MPI to move.
//
// A large MPI_Isend is a rendezvous. Whether the data then moves while the sender computes
// depends on the transport, not on the program:
//   - shared memory with a single-copy mechanism (OpenMPI vader with CMA/XPMEM/KNEM): the
//     receiver copies straight out of the sender's buffer; the sender need not call MPI;
//   - shared memory without it (copy-in/copy-out, e.g. in a container that forbids
//     process_vm_readv) and TCP: the sender pushes each fragment from inside its own MPI
//     calls, so a send posted before a long compute moves only when that compute ends.
// The pipeline executor polls its in-flight sends from a progress thread in the second case.
// That polling costs compute (every MPI_Test runs the whole progress engine), so it is
// wasted in the first case. Rather than guess the transport from MCA parameters, this probe
// measures it: each rank in turn posts a large send to each pipeline neighbour and then
// sleeps outside MPI; the neighbour reports whether the data arrived during the sleep.
#pragma once

#include <cstddef>

#include "comm/communicator.h"

namespace trident::comm {

struct SendProgressProbeOptions {
  std::size_t bytes = std::size_t{1} << 20;  // message size (use the real message size)
  double hold_s = 0.010;                     // how long the sender stays out of MPI
};

// Collective over `group` (every rank calls it). Returns true on a rank when a send from it
// to its ring neighbour (rank + 1 or rank - 1, modulo the group size) did not arrive within
// half the hold time while it stayed out of MPI. A busy machine can only make a transport
// that does not need the sender look like one that does (a late receiver), never the
// reverse, so a wrong answer costs speed, never progress. A group of one rank returns false.
// Takes about 2 * size * hold_s.
bool sends_need_sender_progress(Communicator& group, const SendProgressProbeOptions& options = {});

}  // namespace trident::comm
