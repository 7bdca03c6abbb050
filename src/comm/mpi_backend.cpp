// MpiBackend: each of the worker's calls is one blocking MPI call on the data communicator
// (so OpenMPI's tuned algorithms, exactly what raw MPI gives); the watchdog's queries travel on
// a second communicator with nonblocking sends from whichever thread waits.
#include "comm/mpi_backend.h"

#include <chrono>
#include <numeric>
#include <thread>

namespace trident::comm {

namespace detail {

namespace {

constexpr int kQueryTag = 101;   // "which call have you reached?" payload: the asker's call #
constexpr int kAnswerTag = 102;  // reply: {asked call #, my issued call count}

class MpiRequest final : public P2pRequest {
 public:
  MPI_Request request = MPI_REQUEST_NULL;
  bool test() override {
    int flag = 0;
    MPI_Test(&request, &flag, MPI_STATUS_IGNORE);
    return flag != 0;
  }
};

}  // namespace

MpiBackend::MpiBackend(MPI_Comm comm, std::string name) : name_(std::move(name)) {
  check_mpi(MPI_Comm_dup(comm, &comm_), "MPI_Comm_dup", name_);
  check_mpi(MPI_Comm_dup(comm, &ctl_), "MPI_Comm_dup", name_);
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_set_errhandler(ctl_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
}

MpiBackend::~MpiBackend() { close(); }

std::vector<int> MpiBackend::world_ranks() const {
  MPI_Group mine, world;
  MPI_Comm_group(comm_, &mine);
  MPI_Comm_group(MPI_COMM_WORLD, &world);
  std::vector<int> ranks(size_), out(size_);
  std::iota(ranks.begin(), ranks.end(), 0);
  MPI_Group_translate_ranks(mine, size_, ranks.data(), world, out.data());
  MPI_Group_free(&mine);
  MPI_Group_free(&world);
  return out;
}

void MpiBackend::allreduce(void* buf, int n, DType d, ReduceOp op) {
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, buf, n, mpi_type(d), mpi_op(op), comm_), "MPI_Allreduce",
            name_);
}

void MpiBackend::reduce_scatter_block(const void* in, void* out, int n, DType d, ReduceOp op) {
  check_mpi(MPI_Reduce_scatter_block(in, out, n, mpi_type(d), mpi_op(op), comm_),
            "MPI_Reduce_scatter_block", name_);
}

void MpiBackend::reduce_scatter(const void* in, void* out, const std::vector<int>& counts, DType d,
                                ReduceOp op) {
  check_mpi(MPI_Reduce_scatter(in, out, counts.data(), mpi_type(d), mpi_op(op), comm_),
            "MPI_Reduce_scatter", name_);
}

void MpiBackend::all_gather(const void* in, int n, void* out, bool in_place, DType d) {
  check_mpi(MPI_Allgather(in_place ? MPI_IN_PLACE : in, n, mpi_type(d), out, n, mpi_type(d), comm_),
            "MPI_Allgather", name_);
}

void MpiBackend::all_gather_v(const void* in, int n, void* out, const IntLayout& l, bool in_place,
                              DType d) {
  check_mpi(MPI_Allgatherv(in_place ? MPI_IN_PLACE : in, n, mpi_type(d), out, l.counts.data(),
                           l.displs.data(), mpi_type(d), comm_),
            "MPI_Allgatherv", name_);
}

void MpiBackend::broadcast(void* buf, int n, DType d, int root) {
  check_mpi(MPI_Bcast(buf, n, mpi_type(d), root, comm_), "MPI_Bcast", name_);
}

void MpiBackend::barrier() { check_mpi(MPI_Barrier(comm_), "MPI_Barrier", name_); }

void MpiBackend::all_to_all(const void* in, int n, void* out, DType d) {
  check_mpi(MPI_Alltoall(in, n, mpi_type(d), out, n, mpi_type(d), comm_), "MPI_Alltoall", name_);
}

void MpiBackend::all_to_all_v(const void* in, const IntLayout& s, void* out, const IntLayout& r,
                              DType d) {
  check_mpi(MPI_Alltoallv(in, s.counts.data(), s.displs.data(), mpi_type(d), out, r.counts.data(),
                          r.displs.data(), mpi_type(d), comm_),
            "MPI_Alltoallv", name_);
}

std::unique_ptr<P2pRequest> MpiBackend::isend(const void* buf, int n, DType d, int peer, int tag) {
  auto req = std::make_unique<MpiRequest>();
  check_mpi(MPI_Isend(buf, n, mpi_type(d), peer, tag, comm_, &req->request), "MPI_Isend", name_);
  return req;
}

std::unique_ptr<P2pRequest> MpiBackend::irecv(void* buf, int n, DType d, int peer, int tag) {
  auto req = std::make_unique<MpiRequest>();
  check_mpi(MPI_Irecv(buf, n, mpi_type(d), peer, tag, comm_, &req->request), "MPI_Irecv", name_);
  return req;
}

void MpiBackend::answer_queries(uint64_t issued) {
  std::lock_guard lock(ctl_mutex_);
  if (closed_) return;
  for (;;) {
    int flag = 0;
    MPI_Status st;
    MPI_Iprobe(MPI_ANY_SOURCE, kQueryTag, ctl_, &flag, &st);
    if (!flag) return;
    int64_t asked = 0;
    MPI_Recv(&asked, 1, MPI_INT64_T, st.MPI_SOURCE, kQueryTag, ctl_, MPI_STATUS_IGNORE);
    auto& buf = answer_buffers_.emplace_back();
    buf = {asked, static_cast<int64_t>(issued)};
    MPI_Request req;
    MPI_Isend(buf.data(), 2, MPI_INT64_T, st.MPI_SOURCE, kAnswerTag, ctl_, &req);
    MPI_Request_free(&req);
  }
}

std::map<int, int64_t> MpiBackend::ask_progress(int64_t asked, double grace,
                                                const std::function<void()>& service) {
  std::map<int, int64_t> answers;
  {
    std::lock_guard lock(ctl_mutex_);
    // The buffer lives as long as the group, so the freed requests may finish any time.
    auto& query = answer_buffers_.emplace_back();
    query = {asked, 0};
    for (int r = 0; r < size_; ++r) {
      if (r == rank_) continue;
      MPI_Request req;
      MPI_Isend(query.data(), 1, MPI_INT64_T, r, kQueryTag, ctl_, &req);
      MPI_Request_free(&req);
    }
  }
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  while (elapsed() < grace && static_cast<int>(answers.size()) < size_ - 1) {
    service();
    std::lock_guard lock(ctl_mutex_);
    int flag = 0;
    MPI_Status st;
    MPI_Iprobe(MPI_ANY_SOURCE, kAnswerTag, ctl_, &flag, &st);
    if (flag) {
      int64_t reply[2];
      MPI_Recv(reply, 2, MPI_INT64_T, st.MPI_SOURCE, kAnswerTag, ctl_, MPI_STATUS_IGNORE);
      if (reply[0] == asked) answers[st.MPI_SOURCE] = reply[1];
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }
  return answers;
}

std::unique_ptr<Backend> MpiBackend::split(int color, int key, const std::string& name) {
  MPI_Comm sub = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split(comm_, color < 0 ? MPI_UNDEFINED : color, key, &sub), "MPI_Comm_split",
            name_);
  if (sub == MPI_COMM_NULL) return nullptr;
  auto out = std::make_unique<MpiBackend>(sub, name);
  MPI_Comm_free(&sub);  // the backend holds its own duplicates
  return out;
}

std::unique_ptr<Backend> MpiBackend::split_node(const std::string& name) {
  int rank = 0;
  MPI_Comm_rank(comm_, &rank);
  MPI_Comm sub = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &sub),
            "MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)", name_);
  auto out = std::make_unique<MpiBackend>(sub, name);
  MPI_Comm_free(&sub);  // the backend holds its own duplicates
  return out;
}

std::string MpiBackend::node_name() const {
  char name[MPI_MAX_PROCESSOR_NAME] = {};
  int len = 0;
  MPI_Get_processor_name(name, &len);
  return std::string(name, static_cast<std::size_t>(len));
}

void MpiBackend::close() {
  std::lock_guard lock(ctl_mutex_);
  if (closed_) return;
  // Drop stray watchdog messages so they do not outlive the communicator.
  for (int tag : {kQueryTag, kAnswerTag}) {
    for (;;) {
      int flag = 0;
      MPI_Status st;
      MPI_Iprobe(MPI_ANY_SOURCE, tag, ctl_, &flag, &st);
      if (!flag) break;
      int64_t junk[2];
      MPI_Recv(junk, 2, MPI_INT64_T, st.MPI_SOURCE, tag, ctl_, MPI_STATUS_IGNORE);
    }
  }
  closed_ = true;
  MPI_Comm_free(&comm_);
  MPI_Comm_free(&ctl_);
}

}  // namespace detail

std::unique_ptr<Communicator> make_mpi_communicator(MPI_Comm comm, std::string name,
                                                    CommOptions options) {
  auto backend = std::make_unique<detail::MpiBackend>(comm, name);
  return std::make_unique<Communicator>(std::move(backend), std::move(name), options);
}

MPI_Comm mpi_comm_of(const Communicator& comm) {
  const auto* mpi = dynamic_cast<const detail::MpiBackend*>(&comm.backend());
  TRI_CHECK(mpi != nullptr, "group {} is not backed by MPI (an in-process test group?); this "
            "caller needs an MPI communicator", comm.name());
  return mpi->comm();
}

}  // namespace trident::comm
