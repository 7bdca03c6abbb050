// Backend: what carries a group's data, below the Communicator. The Communicator keeps
// everything the backends share -- validation, call numbers, the worker thread, Work handles,
// debug signatures, the watchdog's message -- and hands the worker's blocking calls to a
// Backend: MpiBackend (comm/mpi_backend.h, the production one) or the in-process backend
// (comm/in_process.h: ranks as threads of one process, for unit tests without mpirun).
// Not part of the public interface.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"

namespace trident::comm::detail {

// Per-rank element counts and displacements in int, as MPI's *v calls take them.
struct IntLayout {
  std::vector<int> counts, displs;
};

// A posted send or receive; test() is polled by Work::wait/test (under the Work's mutex).
class P2pRequest {
 public:
  virtual ~P2pRequest() = default;
  virtual bool test() = 0;  // true once complete; throws on failure
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Group rank -> world rank, for error messages.
  virtual std::vector<int> world_ranks() const = 0;

  // Blocking collectives, called only by the group's worker thread, in issue order, with
  // arguments the Communicator has validated (counts fit int). Reductions get kSum for kAvg
  // (the Communicator divides). `in_place`: this rank's input already sits at its place in out.
  virtual void allreduce(void* buf, int n, DType d, ReduceOp op) = 0;
  virtual void reduce_scatter_block(const void* in, void* out, int n, DType d, ReduceOp op) = 0;
  virtual void reduce_scatter(const void* in, void* out, const std::vector<int>& counts, DType d,
                              ReduceOp op) = 0;
  virtual void all_gather(const void* in, int n, void* out, bool in_place, DType d) = 0;
  virtual void all_gather_v(const void* in, int n, void* out, const IntLayout& layout, bool in_place,
                            DType d) = 0;
  virtual void broadcast(void* buf, int n, DType d, int root) = 0;
  virtual void barrier() = 0;
  virtual void all_to_all(const void* in, int n, void* out, DType d) = 0;
  virtual void all_to_all_v(const void* in, const IntLayout& send, void* out, const IntLayout& recv,
                            DType d) = 0;

  // Point to point, posted from the caller's thread; matched by (peer, tag) in posting order.
  virtual std::unique_ptr<P2pRequest> isend(const void* buf, int n, DType d, int peer, int tag) = 0;
  virtual std::unique_ptr<P2pRequest> irecv(void* buf, int n, DType d, int peer, int tag) = 0;

  // Watchdog (any thread). answer_queries tells the askers this rank has issued `issued` calls;
  // ask_progress asks the others which call they have reached, for up to `grace` seconds
  // (calling `service` meanwhile so two waiting ranks answer each other), and returns the
  // answers (group rank -> calls issued) of the ranks that answered about call `asked`.
  virtual void answer_queries(uint64_t issued) = 0;
  virtual std::map<int, int64_t> ask_progress(int64_t asked, double grace,
                                              const std::function<void()>& service) = 0;

  // Collective over the group (on the worker thread): the ranks passing the same color >= 0
  // form a new group ordered by key (ties by rank); color < 0 returns null.
  virtual std::unique_ptr<Backend> split(int color, int key, const std::string& name) = 0;
  // Collective over the group (on the worker thread): the ranks that share this rank's node --
  // what the transport calls one (MPI: MPI_COMM_TYPE_SHARED, the ranks that can share memory;
  // in-process: every rank) -- as a new group ranked as in this one.
  virtual std::unique_ptr<Backend> split_node(const std::string& name) = 0;
  // This rank's node's name (MPI: MPI_Get_processor_name; in-process: "in-process").
  virtual std::string node_name() const = 0;
  // After the worker has stopped: drops stray watchdog messages and frees the transport.
  virtual void close() = 0;
};

}  // namespace trident::comm::detail
