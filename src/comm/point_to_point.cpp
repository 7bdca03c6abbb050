// The Communicator's point-to-point send and recv (see communicator.h): nonblocking MPI calls
// from the caller's thread, completed through Work like the collectives.
#include "comm/communicator_detail.h"

namespace trident::comm {

using namespace detail;

Work Communicator::send_raw(const void* buf, int64_t count, DType dtype, int peer, int tag) {
  TRI_CHECK(peer >= 0 && peer < size() && peer != rank(),
            "send on group {}: peer {} is not another rank of a group of size {}", name(), peer,
            size());
  TRI_CHECK(tag >= 0 && tag <= 32767, "send on group {}: tag {} outside [0, 32767]", name(), tag);
  auto state = std::make_shared<detail::WorkState>();
  state->sig = Signature{OpKind::kSend, dtype, ReduceOp::kSum, peer, count, 0, 0};
  state->group = group_;
  state->p2p = true;
  check_mpi(MPI_Isend(buf, to_int_count(count, "send"), mpi_type(dtype), peer, tag,
                      group_->comm, &state->request),
            "MPI_Isend", name());
  return Work(state);
}

Work Communicator::recv_raw(void* buf, int64_t count, DType dtype, int peer, int tag) {
  TRI_CHECK(peer >= 0 && peer < size() && peer != rank(),
            "recv on group {}: peer {} is not another rank of a group of size {}", name(), peer,
            size());
  TRI_CHECK(tag >= 0 && tag <= 32767, "recv on group {}: tag {} outside [0, 32767]", name(), tag);
  auto state = std::make_shared<detail::WorkState>();
  state->sig = Signature{OpKind::kRecv, dtype, ReduceOp::kSum, peer, count, 0, 0};
  state->group = group_;
  state->p2p = true;
  check_mpi(MPI_Irecv(buf, to_int_count(count, "recv"), mpi_type(dtype), peer, tag,
                      group_->comm, &state->request),
            "MPI_Irecv", name());
  return Work(state);
}

}  // namespace trident::comm
