// The Communicator's point-to-point send and recv (see communicator.h): nonblocking backend calls
// (MPI_Isend/MPI_Irecv) from the caller's thread, completed through Work like the collectives.
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
  state->request = group_->backend->isend(buf, to_int_count(count, "send"), dtype, peer, tag);
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
  state->request = group_->backend->irecv(buf, to_int_count(count, "recv"), dtype, peer, tag);
  return Work(state);
}

}  // namespace trident::comm
