// Communicator: collectives and point-to-point messages over one process group, each
// returning a Work handle, with sequence numbers, signature checks (debug) and a watchdog.
// Process layout (Mesh) lives in comm/mesh.h; MPI start-up in comm/runtime.h. What carries the
// data is a Backend (comm/backend.h): MPI's (comm/mpi_backend.h, make_mpi_communicator) or
// ranks as threads of one process (comm/in_process.h, for unit tests). No MPI type appears here.
//
// How communication overlaps computation: a communication thread per group.
//   Every Communicator owns one worker thread that executes the group's collectives, in
//   issue order, as ordinary *blocking* MPI calls (MPI_Allreduce, MPI_Reduce_scatter_block,
//   ...). The caller enqueues and returns a Work at once; Work::wait blocks on a condition
//   variable. We chose this over non-blocking collectives (MPI_Iallreduce & co.) because:
//   - OpenMPI's libnbc only progresses inside MPI calls, so an MPI_Iallreduce issued before
//     a long backward pass does almost nothing until wait() unless the compute code is
//     sprinkled with MPI_Test calls. bench/comm.cpp measures this ("overlap" section): with
//     libnbc and no test() calls the whole collective is exposed after the compute; with the
//     worker thread it runs during the compute.
//   - Blocking collectives use OpenMPI's tuned algorithms, i.e. exactly what raw MPI gives,
//     so the layer costs only a queue hand-off (bench: ratio ~1.0 at >= 16 MB).
//   - One thread per group keeps each group's order (the MPI contract) while different
//     groups (tp, dp, pp) progress independently, so no cross-group ordering deadlock.
//   It needs MPI_THREAD_MULTIPLE (MpiRuntime requests it and fails clearly without it).
//   send/recv are MPI_Isend/MPI_Irecv posted directly by the caller; they progress whenever
//   any thread of the process is inside MPI (e.g. a group worker) and at wait()/test().
//
// Contracts (as in gloo/c10d):
//   - All ranks of a group issue the group's collectives in the same order with matching
//     arguments (kind, count, dtype, root). Debug mode (TRIDENT_COMM_DEBUG=1 or
//     CommOptions::debug) checks this before every collective and throws, on every rank, an
//     error naming the first mismatching rank instead of hanging or corrupting memory.
//   - A buffer passed to an operation is not read or written by the caller between issue and
//     the successful wait()/test() of its Work, and must outlive that moment.
//   - A Communicator is used from one thread at a time (the training loop's thread).
//   - Communicators are destroyed before MpiRuntime (destruction drains pending work).
//
// Watchdog: a wait longer than the timeout (TRIDENT_COMM_TIMEOUT seconds, default 300, or
// CommOptions::timeout_s) asks the other group members which call they have reached, then
// reports the operation, the group, its call number and the ranks that did not arrive. By
// default it prints that and calls MPI_Abort so the whole job ends (no silent hang);
// CommOptions::on_timeout = TimeoutAction::kThrow makes wait() throw it instead (tests).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace trident::comm {

enum class ReduceOp : int32_t { kSum, kAvg, kMax, kMin };
// kBF16 only moves bits (MPI has no bf16 type or sum): sums of bf16 go through allreduce_bf16 /
// reduce_scatter_bf16_v, which add in fp32.
enum class DType : int32_t { kF32, kF64, kI32, kI64, kU8, kU64, kBF16 };
enum class OpKind : int32_t {
  kAllreduce, kReduceScatter, kAllGather, kBroadcast, kBarrier, kSend, kRecv, kAllToAll
};
enum class TimeoutAction { kAbort, kThrow };

const char* to_string(ReduceOp op);
const char* to_string(DType dtype);
const char* to_string(OpKind kind);

template <class T> constexpr DType dtype_of() {
  if constexpr (std::is_same_v<T, float>) return DType::kF32;
  else if constexpr (std::is_same_v<T, double>) return DType::kF64;
  else if constexpr (std::is_same_v<T, int32_t>) return DType::kI32;
  else if constexpr (std::is_same_v<T, int64_t>) return DType::kI64;
  else if constexpr (std::is_same_v<T, uint8_t>) return DType::kU8;
  else if constexpr (std::is_same_v<T, uint64_t>) return DType::kU64;
  else static_assert(sizeof(T) == 0, "unsupported element type for trident::comm");
}
size_t dtype_size(DType dtype);

struct CommOptions {
  double timeout_s = 300.0;     // watchdog limit of one wait()
  bool debug = false;           // check operation signatures across the group
  TimeoutAction on_timeout = TimeoutAction::kAbort;
  // Defaults overridden by TRIDENT_COMM_TIMEOUT (seconds) and TRIDENT_COMM_DEBUG (0/1).
  static CommOptions from_env();
};

// What one rank believes a collective is; compared across the group in debug mode.
struct Signature {
  OpKind kind = OpKind::kBarrier;
  DType dtype = DType::kF32;
  ReduceOp op = ReduceOp::kSum;
  int32_t root = -1;            // broadcast root, send/recv peer; -1 otherwise
  int64_t count = 0;            // elements: buffer (allreduce, broadcast), total (gathers)
  uint64_t counts_hash = 0;     // hash of the per-rank counts of *_v variants, 0 otherwise
  uint64_t seq = 0;             // the group's call number, from 1
  std::string describe() const; // "allreduce(count=12, dtype=f32, op=sum)"
};

namespace detail {
struct WorkState;
struct Group;
class Backend;
}  // namespace detail

// Handle of one issued operation. Copyable (shared state); a default Work is complete.
class Work {
 public:
  Work() = default;
  explicit Work(std::shared_ptr<detail::WorkState> state) : state_(std::move(state)) {}
  // Blocks until done; rethrows the operation's error. Runs the watchdog with the
  // communicator's timeout, or with timeout_s when > 0.
  void wait(double timeout_s = -1.0);
  // True when done (rethrowing its error); never blocks.
  bool test();
  bool is_completed() const;

 private:
  std::shared_ptr<detail::WorkState> state_;
};

// Element counts of splitting `total` over `parts` ranks: the first total % parts ranks get
// one extra element. Rank r's chunk starts at the sum of the counts before it. This is the
// layout reduce_scatter_v / all_gather_v expect when callers shard an indivisible buffer.
std::vector<int64_t> chunk_counts(int64_t total, int parts);
std::vector<int64_t> chunk_offsets(std::span<const int64_t> counts);

class Communicator {
 public:
  // Over a backend (comm/backend.h): MPI's (make_mpi_communicator in comm/mpi_backend.h wraps
  // a duplicate of an MPI communicator), or the in-process one (comm/in_process.h). `name`
  // appears in errors ("group dp").
  Communicator(std::unique_ptr<detail::Backend> backend, std::string name,
               CommOptions options = CommOptions::from_env());
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const;
  int size() const;
  const std::string& name() const;
  const CommOptions& options() const;
  void set_timeout(double seconds);
  void set_debug(bool on);
  void set_timeout_action(TimeoutAction action);
  // The transport, for backend-specific accessors (mpi_comm_of in comm/mpi_backend.h).
  detail::Backend& backend() const;
  // Collective over the group, in issue order with its collectives: the ranks passing the same
  // color >= 0 form a new group, ranked by key (ties by rank), with this group's options;
  // color < 0 returns null (the rank joins no group). A rank that never calls it makes the
  // others' watchdog fire after the timeout.
  std::unique_ptr<Communicator> split(int color, int key, std::string name);
  // Collective likewise: the ranks sharing this rank's node (what the transport calls one:
  // MPI_COMM_TYPE_SHARED under MPI, every rank in-process), ranked as here.
  std::unique_ptr<Communicator> split_node(std::string name);
  // This rank's node's name (MPI_Get_processor_name; "in-process").
  std::string node_name() const;
  // Number of collectives issued on this group so far.
  uint64_t collectives_issued() const;
  // Bytes this rank has sent to the others in allreduce, reduce-scatter, all-gather and
  // all-to-all calls (fp32 and the bf16 sums; not broadcast or point-to-point). The fp32
  // collectives count a bandwidth-optimal ring's (an allreduce 2 (N-1)/N of the buffer, a
  // reduce-scatter (N-1)/N, an all-gather its input to N-1 ranks) -- MPI picks its own
  // algorithm, which sends at least that -- the bf16 sums what their all_to_all_v and
  // all_gather_v send, an all_to_all(_v) every chunk but this rank's own. For benchmarks and
  // the tests of what a collective moves.
  uint64_t bytes_sent() const;

  // In place: buf <- op over ranks of buf. kAvg divides the sum by size() (floating only).
  template <class T> Work allreduce(std::span<T> buf, ReduceOp op = ReduceOp::kSum) {
    return allreduce_raw(buf.data(), static_cast<int64_t>(buf.size()), dtype_of<T>(), op);
  }
  // Equal chunks: in.size() == size() * out.size(); rank r receives the reduction of
  // in[r*c, (r+1)*c) with c = out.size(). `in` and `out` must not overlap.
  template <class T>
  Work reduce_scatter(std::span<const T> in, std::span<T> out, ReduceOp op = ReduceOp::kSum) {
    return reduce_scatter_raw(in.data(), static_cast<int64_t>(in.size()), out.data(),
                              static_cast<int64_t>(out.size()), {}, dtype_of<T>(), op);
  }
  // Variable chunks: counts[r] elements for rank r, laid out back to back in `in` (rank r's
  // chunk at offset sum(counts[0..r)); chunk_counts() gives the usual split).
  // in.size() == sum(counts), out.size() == counts[rank()].
  template <class T>
  Work reduce_scatter_v(std::span<const T> in, std::span<T> out,
                        std::span<const int64_t> counts, ReduceOp op = ReduceOp::kSum) {
    return reduce_scatter_raw(in.data(), static_cast<int64_t>(in.size()), out.data(),
                              static_cast<int64_t>(out.size()), counts, dtype_of<T>(), op);
  }
  // Equal chunks: out.size() == size() * in.size(); rank r's `in` lands at out[r*c, (r+1)*c).
  // In place when in.data() == out.data() + rank() * in.size().
  template <class T> Work all_gather(std::span<const T> in, std::span<T> out) {
    return all_gather_raw(in.data(), static_cast<int64_t>(in.size()), out.data(),
                          static_cast<int64_t>(out.size()), {}, dtype_of<T>());
  }
  // Variable chunks laid out as in reduce_scatter_v: in.size() == counts[rank()],
  // out.size() == sum(counts). In place when `in` is already at its offset in `out`.
  template <class T>
  Work all_gather_v(std::span<const T> in, std::span<T> out, std::span<const int64_t> counts) {
    return all_gather_raw(in.data(), static_cast<int64_t>(in.size()), out.data(),
                          static_cast<int64_t>(out.size()), counts, dtype_of<T>());
  }
  // Personalised exchange (MPI_Alltoallv): this rank sends send_counts[r] elements to rank r,
  // laid out back to back in `in` (rank r's chunk at offset sum(send_counts[0..r))), and
  // receives recv_counts[r] elements from rank r, laid out the same way in `out`.
  // in.size() == sum(send_counts), out.size() == sum(recv_counts); they must not overlap.
  // Counts differ between ranks, so callers exchange them first (all_to_all of one count per
  // rank); debug mode checks that every send count equals its peer's receive count and throws
  // on every rank, naming the pair, instead of truncating or hanging.
  template <class T>
  Work all_to_all_v(std::span<const T> in, std::span<const int64_t> send_counts, std::span<T> out,
                    std::span<const int64_t> recv_counts) {
    return all_to_all_raw(in.data(), static_cast<int64_t>(in.size()), send_counts, out.data(),
                          static_cast<int64_t>(out.size()), recv_counts, dtype_of<T>());
  }
  // Equal chunks: in.size() == out.size() == size() * c; rank r receives in[r*c, (r+1)*c)
  // of every rank, rank s's at out[s*c, (s+1)*c).
  template <class T> Work all_to_all(std::span<const T> in, std::span<T> out) {
    return all_to_all_raw(in.data(), static_cast<int64_t>(in.size()), {}, out.data(),
                          static_cast<int64_t>(out.size()), {}, dtype_of<T>());
  }
  // bf16 sums of fp32 buffers (gradients, --grad-reduce-dtype bf16), half the bytes of the fp32
  // collectives. Every rank rounds its values to bf16 (nearest even); an all_to_all_v sends rank
  // r every rank's bf16 of r's chunk; r adds them in fp32 in rank order 0, 1, ..., N-1 and
  // rounds the sum to bf16 once. So each element is round(sum_s round(x_s)) whatever MPI's
  // algorithms, bucket boundaries or message sizes (MPI only moves bytes), the same bits on
  // every rank. Rank r's chunk is chunk_counts(n, N)[r] (allreduce) or counts[r] (reduce-scatter).
  // Wire: all_to_all_v + all_gather_v of 2 bytes per element, each (N-1)/N of the buffer per
  // rank, as a ring allreduce's two phases of 4 bytes. Op sum only.
  // In place: buf <- the bf16 sum over ranks, widened back to fp32 (exact).
  Work allreduce_bf16(std::span<float> buf);
  // As reduce_scatter_v with op sum: out (counts[rank()] elements) <- the bf16 sum, widened.
  Work reduce_scatter_bf16_v(std::span<const float> in, std::span<float> out,
                             std::span<const int64_t> counts);
  template <class T> Work broadcast(std::span<T> buf, int root) {
    return broadcast_raw(buf.data(), static_cast<int64_t>(buf.size()), dtype_of<T>(), root);
  }
  Work barrier();
  // Point to point (not sequenced with the collectives; match by peer and tag, in order).
  template <class T> Work send(std::span<const T> buf, int peer, int tag = 0) {
    return send_raw(buf.data(), static_cast<int64_t>(buf.size()), dtype_of<T>(), peer, tag);
  }
  template <class T> Work recv(std::span<T> buf, int peer, int tag = 0) {
    return recv_raw(buf.data(), static_cast<int64_t>(buf.size()), dtype_of<T>(), peer, tag);
  }

  // Untyped entry points (the templates above forward here).
  Work allreduce_raw(void* buf, int64_t count, DType dtype, ReduceOp op);
  Work reduce_scatter_raw(const void* in, int64_t in_count, void* out, int64_t out_count,
                          std::span<const int64_t> counts, DType dtype, ReduceOp op);
  Work all_gather_raw(const void* in, int64_t in_count, void* out, int64_t out_count,
                      std::span<const int64_t> counts, DType dtype);
  Work broadcast_raw(void* buf, int64_t count, DType dtype, int root);
  // Empty counts: equal chunks (all_to_all).
  Work all_to_all_raw(const void* in, int64_t in_count, std::span<const int64_t> send_counts, void* out,
                      int64_t out_count, std::span<const int64_t> recv_counts, DType dtype);
  Work send_raw(const void* buf, int64_t count, DType dtype, int peer, int tag);
  Work recv_raw(void* buf, int64_t count, DType dtype, int peer, int tag);

 private:
  // split / split_node: `make` runs on the worker, in issue order, under the watchdog.
  std::unique_ptr<Communicator> split_by(std::function<std::unique_ptr<detail::Backend>(detail::Backend&)> make,
                                         std::string name);

  std::shared_ptr<detail::Group> group_;
};

// Start-up check that every rank of `comm` holds the same value (e.g. a config hash). Throws
// on every rank, with the same message, when they differ: which ranks hold which hash.
void check_same_across_ranks(Communicator& comm, std::string_view what, uint64_t hash);

// For a failure only `root` can see (a file it alone read or wrote): `root`'s `error` (empty when
// it had none) becomes every rank's, and every rank throws it. Whichever rank's abort ends the job
// first then prints the cause itself: a "see rank 0's error" thrown on the others could win that
// race and kill rank 0 before it printed. Collective; returns when `root` had no error.
void throw_if_root_failed(Communicator& comm, const std::string& error, int root = 0);

// For main(): prints "[rank R] error: <message>" to stderr once and ends the whole job with
// MPI_Abort(code) (plain exit when MPI is not running). Never returns.
[[noreturn]] void abort_job(const std::string& message, int code = 1);

}  // namespace trident::comm
