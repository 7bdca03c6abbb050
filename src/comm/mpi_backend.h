// MpiBackend: the Communicator's production backend (comm/backend.h), one duplicated MPI
// communicator for the data (used by the worker thread only) and one for the watchdog's
// "which call have you reached?" queries (any thread). Private to src/comm and the few callers
// that need raw MPI (bench comm's baseline, node-local splits); the public headers name no MPI.
#pragma once

#include <mpi.h>

#include <array>
#include <climits>
#include <deque>
#include <memory>
#include <mutex>
#include <string>

#include "comm/backend.h"
#include "core/check.h"

namespace trident::comm {

namespace detail {

inline MPI_Datatype mpi_type(DType d) {
  switch (d) {
    case DType::kF32: return MPI_FLOAT;
    case DType::kF64: return MPI_DOUBLE;
    case DType::kI32: return MPI_INT32_T;
    case DType::kI64: return MPI_INT64_T;
    case DType::kU8: return MPI_UINT8_T;
    case DType::kU64: return MPI_UINT64_T;
    case DType::kBF16: return MPI_UINT16_T;
  }
  return MPI_BYTE;
}

inline MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg: return MPI_SUM;
    case ReduceOp::kMax: return MPI_MAX;
    case ReduceOp::kMin: return MPI_MIN;
  }
  return MPI_SUM;
}

inline void check_mpi(int rc, const char* what, const std::string& group) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  TRI_FAIL("{} on group {} failed: {}", what, group, std::string(text, len));
}

class MpiBackend final : public Backend {
 public:
  // Duplicates `comm` twice (data and watchdog); the caller keeps `comm`. Collective.
  MpiBackend(MPI_Comm comm, std::string name);
  ~MpiBackend() override;

  MPI_Comm comm() const { return comm_; }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::vector<int> world_ranks() const override;
  void allreduce(void* buf, int n, DType d, ReduceOp op) override;
  void reduce_scatter_block(const void* in, void* out, int n, DType d, ReduceOp op) override;
  void reduce_scatter(const void* in, void* out, const std::vector<int>& counts, DType d,
                      ReduceOp op) override;
  void all_gather(const void* in, int n, void* out, bool in_place, DType d) override;
  void all_gather_v(const void* in, int n, void* out, const IntLayout& layout, bool in_place,
                    DType d) override;
  void broadcast(void* buf, int n, DType d, int root) override;
  void barrier() override;
  void all_to_all(const void* in, int n, void* out, DType d) override;
  void all_to_all_v(const void* in, const IntLayout& send, void* out, const IntLayout& recv,
                    DType d) override;
  std::unique_ptr<P2pRequest> isend(const void* buf, int n, DType d, int peer, int tag) override;
  std::unique_ptr<P2pRequest> irecv(void* buf, int n, DType d, int peer, int tag) override;
  void answer_queries(uint64_t issued) override;
  std::map<int, int64_t> ask_progress(int64_t asked, double grace,
                                      const std::function<void()>& service) override;
  std::unique_ptr<Backend> split(int color, int key, const std::string& name) override;
  std::unique_ptr<Backend> split_node(const std::string& name) override;
  std::string node_name() const override;
  void close() override;

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;  // the data communicator, used only by the worker thread
  MPI_Comm ctl_ = MPI_COMM_NULL;   // watchdog queries and answers (any thread)
  int rank_ = 0, size_ = 1;
  std::string name_;
  std::mutex ctl_mutex_;
  std::deque<std::array<int64_t, 2>> answer_buffers_;  // live until the group is closed
  bool closed_ = false;
};

}  // namespace detail

// A Communicator over a duplicate of `comm` (the caller keeps `comm`). Collective over comm.
std::unique_ptr<Communicator> make_mpi_communicator(MPI_Comm comm, std::string name,
                                                    CommOptions options = CommOptions::from_env());
// The duplicated MPI communicator under an MPI-backed Communicator, for raw-MPI baselines and
// MPI-only calls (MPI_Comm_split_type); throws for other backends.
MPI_Comm mpi_comm_of(const Communicator& comm);

}  // namespace trident::comm
