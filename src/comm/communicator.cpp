// Communicator implementation: a worker thread per group running blocking MPI collectives in
// issue order, signature checks in debug mode, and the watchdog's who-did-not-arrive query.
#include "comm/communicator.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <numeric>
#include <thread>

#include "comm/bf16_sum.h"
#include "core/check.h"

namespace trident::comm {

namespace {

using Clock = std::chrono::steady_clock;

constexpr int kQueryTag = 101;   // "which call have you reached?" payload: the asker's call #
constexpr int kAnswerTag = 102;  // reply: {asked call #, my issued call count}
constexpr double kServiceAfterS = 0.05;  // waits longer than this answer watchdog queries
constexpr int kSpinIterations = 200;     // yields before sleeping (in wait and in the worker)

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

MPI_Datatype mpi_type(DType d) {
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

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg: return MPI_SUM;
    case ReduceOp::kMax: return MPI_MAX;
    case ReduceOp::kMin: return MPI_MIN;
  }
  return MPI_SUM;
}

bool is_floating(DType d) { return d == DType::kF32 || d == DType::kF64; }

void check_mpi(int rc, const char* what, const std::string& group) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  TRI_FAIL("{} on group {} failed: {}", what, group, std::string(text, len));
}

int to_int_count(int64_t n, const char* what) {
  TRI_CHECK(n >= 0 && n <= INT_MAX, "{}: {} elements do not fit MPI's int count (max {}); split "
            "the buffer", what, n, INT_MAX);
  return static_cast<int>(n);
}

uint64_t fnv1a(const void* data, size_t bytes, uint64_t h = 1469598103934665603ull) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

// Fixed-size wire form of a Signature, allgathered in debug mode.
struct WireSig {
  int32_t kind, dtype, op, root;
  int64_t count;
  uint64_t counts_hash, seq, name_hash;
};

WireSig to_wire(const Signature& s, uint64_t name_hash) {
  return WireSig{static_cast<int32_t>(s.kind), static_cast<int32_t>(s.dtype),
                 static_cast<int32_t>(s.op), s.root, s.count, s.counts_hash, s.seq, name_hash};
}

Signature from_wire(const WireSig& w) {
  Signature s;
  s.kind = static_cast<OpKind>(w.kind);
  s.dtype = static_cast<DType>(w.dtype);
  s.op = static_cast<ReduceOp>(w.op);
  s.root = w.root;
  s.count = w.count;
  s.counts_hash = w.counts_hash;
  s.seq = w.seq;
  return s;
}

bool same(const WireSig& a, const WireSig& b) { return std::memcmp(&a, &b, sizeof a) == 0; }

std::string join_ints(const std::vector<int>& v) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + std::to_string(v[i]);
  return out;
}

}  // namespace

const char* to_string(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kAvg: return "avg";
    case ReduceOp::kMax: return "max";
    case ReduceOp::kMin: return "min";
  }
  return "?";
}

const char* to_string(DType d) {
  switch (d) {
    case DType::kF32: return "f32";
    case DType::kF64: return "f64";
    case DType::kI32: return "i32";
    case DType::kI64: return "i64";
    case DType::kU8: return "u8";
    case DType::kU64: return "u64";
    case DType::kBF16: return "bf16";
  }
  return "?";
}

const char* to_string(OpKind k) {
  switch (k) {
    case OpKind::kAllreduce: return "allreduce";
    case OpKind::kReduceScatter: return "reduce_scatter";
    case OpKind::kAllGather: return "all_gather";
    case OpKind::kBroadcast: return "broadcast";
    case OpKind::kBarrier: return "barrier";
    case OpKind::kSend: return "send";
    case OpKind::kRecv: return "recv";
    case OpKind::kAllToAll: return "all_to_all";
  }
  return "?";
}

size_t dtype_size(DType d) {
  switch (d) {
    case DType::kF32: return 4;
    case DType::kF64: return 8;
    case DType::kI32: return 4;
    case DType::kI64: return 8;
    case DType::kU8: return 1;
    case DType::kU64: return 8;
    case DType::kBF16: return 2;
  }
  return 1;
}

std::string Signature::describe() const {
  std::string s = fmt::format("{}(count={}, dtype={}", to_string(kind), count, to_string(dtype));
  if (kind == OpKind::kAllreduce || kind == OpKind::kReduceScatter) {
    s += fmt::format(", op={}", to_string(op));
  }
  if (kind == OpKind::kBroadcast) s += fmt::format(", root={}", root);
  if (kind == OpKind::kSend || kind == OpKind::kRecv) s += fmt::format(", peer={}", root);
  if (counts_hash != 0) s += fmt::format(", counts_hash={:016x}", counts_hash);
  return s + ")";
}

CommOptions CommOptions::from_env() {
  CommOptions o;
  if (const char* t = std::getenv("TRIDENT_COMM_TIMEOUT"); t && *t) {
    char* end = nullptr;
    double v = std::strtod(t, &end);
    TRI_CHECK(end != t && *end == '\0' && v > 0, "TRIDENT_COMM_TIMEOUT='{}' is not a positive "
              "number of seconds", t);
    o.timeout_s = v;
  }
  if (const char* d = std::getenv("TRIDENT_COMM_DEBUG"); d && *d) {
    o.debug = std::string_view(d) != "0";
  }
  return o;
}

std::vector<int64_t> chunk_counts(int64_t total, int parts) {
  TRI_CHECK(parts > 0 && total >= 0, "chunk_counts({}, {}): need parts > 0, total >= 0", total,
            parts);
  std::vector<int64_t> counts(parts, total / parts);
  for (int64_t r = 0; r < total % parts; ++r) ++counts[r];
  return counts;
}

std::vector<int64_t> chunk_offsets(std::span<const int64_t> counts) {
  std::vector<int64_t> offsets(counts.size(), 0);
  for (size_t r = 1; r < counts.size(); ++r) offsets[r] = offsets[r - 1] + counts[r - 1];
  return offsets;
}

namespace detail {

struct Group {
  MPI_Comm comm = MPI_COMM_NULL;  // the data communicator, used only by the worker thread
  MPI_Comm ctl = MPI_COMM_NULL;   // watchdog queries and answers (any thread)
  int rank = 0;
  int size = 1;
  std::string name;
  uint64_t name_hash = 0;
  CommOptions options;
  std::vector<int> world_ranks;   // group rank -> MPI_COMM_WORLD rank
  std::atomic<uint64_t> issued{0};
  std::atomic<uint64_t> bytes_sent{0};  // see Communicator::bytes_sent

  std::mutex queue_mutex;
  std::condition_variable queue_cv;
  std::deque<std::function<void()>> queue;
  std::atomic<size_t> queue_size{0};
  bool stopping = false;
  std::thread worker;

  std::mutex ctl_mutex;
  std::deque<std::array<int64_t, 2>> answer_buffers;  // live until the group is closed
  bool closed = false;

  std::string who(int r) const {
    if (world_ranks.empty() || world_ranks[r] == r) return fmt::format("rank {}", r);
    return fmt::format("rank {} (world rank {})", r, world_ranks[r]);
  }

  void run_worker() {
    for (;;) {
      std::function<void()> fn;
      // Back-to-back operations are common (buckets, layers): look again before sleeping.
      for (int i = 0; i < kSpinIterations && queue_size.load(std::memory_order_acquire) == 0;
           ++i) {
        std::this_thread::yield();
      }
      {
        std::unique_lock lock(queue_mutex);
        queue_cv.wait(lock, [&] { return stopping || !queue.empty(); });
        if (queue.empty()) return;
        fn = std::move(queue.front());
        queue.pop_front();
        queue_size.store(queue.size(), std::memory_order_release);
      }
      fn();
    }
  }

  void enqueue(std::function<void()> fn) {
    {
      std::lock_guard lock(queue_mutex);
      queue.push_back(std::move(fn));
      queue_size.store(queue.size(), std::memory_order_release);
    }
    queue_cv.notify_one();
  }

  // Answers other ranks' "which call have you reached?" queries on this group.
  void service_queries() {
    std::lock_guard lock(ctl_mutex);
    if (closed) return;
    for (;;) {
      int flag = 0;
      MPI_Status st;
      MPI_Iprobe(MPI_ANY_SOURCE, kQueryTag, ctl, &flag, &st);
      if (!flag) return;
      int64_t asked = 0;
      MPI_Recv(&asked, 1, MPI_INT64_T, st.MPI_SOURCE, kQueryTag, ctl, MPI_STATUS_IGNORE);
      auto& buf = answer_buffers.emplace_back();
      buf = {asked, static_cast<int64_t>(issued.load())};
      MPI_Request req;
      MPI_Isend(buf.data(), 2, MPI_INT64_T, st.MPI_SOURCE, kAnswerTag, ctl, &req);
      MPI_Request_free(&req);
    }
  }

  // Debug mode: every rank contributes its signature; all ranks see the same table and so
  // all throw the same error naming the first rank that disagrees with rank 0.
  void check_signature(const Signature& mine) {
    WireSig w = to_wire(mine, name_hash);
    std::vector<WireSig> all(size);
    check_mpi(MPI_Allgather(&w, sizeof w, MPI_BYTE, all.data(), sizeof w, MPI_BYTE, comm),
              "signature check (MPI_Allgather)", name);
    for (int r = 1; r < size; ++r) {
      if (same(all[r], all[0])) continue;
      Signature theirs = from_wire(all[r]);
      Signature ref = from_wire(all[0]);
      std::string extra = all[r].name_hash != all[0].name_hash
                              ? " (the ranks name this group differently)" : "";
      throw Error(fmt::format(
          "collective mismatch on group {}: {} called {} as call #{} on group {} while rank 0 "
          "called {} as call #{}{}. All ranks of a group must issue the same collectives in "
          "the same order; look for a code path that only some ranks take",
          name, who(r), theirs.describe(), theirs.seq, name, ref.describe(), ref.seq, extra));
    }
  }
};

struct WorkState {
  std::mutex mutex;
  std::condition_variable cv;
  bool done = false;
  std::atomic<bool> done_flag{false};  // mirrors `done` for lock-free spinning
  std::exception_ptr error;
  Signature sig;
  std::shared_ptr<Group> group;
  MPI_Request request = MPI_REQUEST_NULL;  // send/recv only
  bool p2p = false;

  void finish(std::exception_ptr e) {
    {
      std::lock_guard lock(mutex);
      error = std::move(e);
      done = true;
      done_flag.store(true, std::memory_order_release);
    }
    cv.notify_all();
  }
};

}  // namespace detail

namespace {

// Asks every other member which call it has reached, for a grace period, and builds the
// watchdog's message. Best effort: a rank busy outside communication cannot answer and is
// reported as not arrived, which is also what makes the others wait.
std::string diagnose_timeout(detail::WorkState& s, double waited) {
  detail::Group& g = *s.group;
  const int64_t asked = static_cast<int64_t>(s.sig.seq);
  std::map<int, int64_t> answers;
  if (!s.p2p) {
    {
      std::lock_guard lock(g.ctl_mutex);
      // The buffer lives as long as the group, so the freed requests may finish any time.
      auto& query = g.answer_buffers.emplace_back();
      query = {asked, 0};
      for (int r = 0; r < g.size; ++r) {
        if (r == g.rank) continue;
        MPI_Request req;
        MPI_Isend(query.data(), 1, MPI_INT64_T, r, kQueryTag, g.ctl, &req);
        MPI_Request_free(&req);
      }
    }
    const double grace = std::clamp(g.options.timeout_s / 4, 0.5, 2.0);
    auto start = Clock::now();
    while (seconds_since(start) < grace && static_cast<int>(answers.size()) < g.size - 1) {
      g.service_queries();
      std::lock_guard lock(g.ctl_mutex);
      int flag = 0;
      MPI_Status st;
      MPI_Iprobe(MPI_ANY_SOURCE, kAnswerTag, g.ctl, &flag, &st);
      if (flag) {
        int64_t reply[2];
        MPI_Recv(reply, 2, MPI_INT64_T, st.MPI_SOURCE, kAnswerTag, g.ctl, MPI_STATUS_IGNORE);
        if (reply[0] == asked) answers[st.MPI_SOURCE] = reply[1];
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
    }
  }
  std::string head = fmt::format(
      "watchdog: {} call #{} on group {} did not complete within {:.1f} s (this is {} of the "
      "group)", s.sig.describe(), s.sig.seq, g.name, waited, g.who(g.rank));
  if (s.p2p) {
    return fmt::format("{}: peer {} did not arrive (no matching {} posted); check the "
                       "send/recv pairing. Raise TRIDENT_COMM_TIMEOUT if the peer is "
                       "legitimately busy longer",
                       head, g.who(s.sig.root), s.sig.kind == OpKind::kSend ? "recv" : "send");
  }
  std::vector<int> arrived{g.rank}, missing;
  std::string details;
  for (int r = 0; r < g.size; ++r) {
    if (r == g.rank) continue;
    auto it = answers.find(r);
    if (it != answers.end() && it->second >= asked) {
      arrived.push_back(r);
    } else {
      missing.push_back(r);
      details += it == answers.end()
                     ? fmt::format("; {} did not answer (busy outside communication, hung or "
                                   "dead)", g.who(r))
                     : fmt::format("; {} has only issued {} calls on group {}", g.who(r),
                                   it->second, g.name);
    }
  }
  std::sort(arrived.begin(), arrived.end());
  return fmt::format(
      "{}: ranks that did not arrive: [{}]{}; ranks waiting in it: [{}] (group ranks of {}). "
      "Check that every rank issues the same collectives; raise TRIDENT_COMM_TIMEOUT if the "
      "work between collectives is legitimately longer",
      head, join_ints(missing), details, join_ints(arrived), g.name);
}

[[noreturn]] void on_timeout(detail::WorkState& s, double waited) {
  std::string msg = diagnose_timeout(s, waited);
  if (s.group->options.on_timeout == TimeoutAction::kAbort) abort_job(msg, 1);
  throw Error(msg);
}

}  // namespace

void Work::wait(double timeout_s) {
  if (!state_) return;
  detail::WorkState& s = *state_;
  const double limit = timeout_s > 0 ? timeout_s : s.group->options.timeout_s;
  const auto start = Clock::now();
  if (s.p2p) {
    for (;;) {
      int flag = 0;
      {
        std::lock_guard lock(s.mutex);
        if (s.done) break;
        MPI_Test(&s.request, &flag, MPI_STATUS_IGNORE);
        if (flag) s.done = true;
      }
      if (flag) break;
      double waited = seconds_since(start);
      if (waited > kServiceAfterS) s.group->service_queries();
      if (waited > limit) on_timeout(s, waited);
      std::this_thread::yield();
    }
  } else {
    // Spin briefly first: short collectives finish within microseconds, and a condition
    // variable wake-up costs more than that on a busy machine.
    for (int i = 0; i < kSpinIterations && !s.done_flag.load(std::memory_order_acquire); ++i) {
      std::this_thread::yield();
    }
    std::unique_lock lock(s.mutex);
    while (!s.done) {
      s.cv.wait_for(lock, std::chrono::milliseconds(20));
      if (s.done) break;
      double waited = seconds_since(start);
      if (waited > kServiceAfterS) {
        lock.unlock();
        s.group->service_queries();
        if (waited > limit) on_timeout(s, waited);
        lock.lock();
      }
    }
  }
  std::lock_guard lock(s.mutex);
  if (s.error) std::rethrow_exception(s.error);
}

bool Work::test() {
  if (!state_) return true;
  detail::WorkState& s = *state_;
  std::lock_guard lock(s.mutex);
  if (!s.done && s.p2p) {
    int flag = 0;
    MPI_Test(&s.request, &flag, MPI_STATUS_IGNORE);
    if (flag) s.done = true;
  }
  if (s.done && s.error) std::rethrow_exception(s.error);
  return s.done;
}

bool Work::is_completed() const {
  if (!state_) return true;
  std::lock_guard lock(state_->mutex);
  return state_->done;
}

Communicator::Communicator(MPI_Comm comm, std::string name, CommOptions options)
    : group_(std::make_shared<detail::Group>()) {
  detail::Group& g = *group_;
  g.name = std::move(name);
  g.name_hash = fnv1a(g.name.data(), g.name.size());
  g.options = options;
  check_mpi(MPI_Comm_dup(comm, &g.comm), "MPI_Comm_dup", g.name);
  check_mpi(MPI_Comm_dup(comm, &g.ctl), "MPI_Comm_dup", g.name);
  MPI_Comm_set_errhandler(g.comm, MPI_ERRORS_RETURN);
  MPI_Comm_set_errhandler(g.ctl, MPI_ERRORS_RETURN);
  MPI_Comm_rank(g.comm, &g.rank);
  MPI_Comm_size(g.comm, &g.size);
  MPI_Group mine, world;
  MPI_Comm_group(g.comm, &mine);
  MPI_Comm_group(MPI_COMM_WORLD, &world);
  std::vector<int> ranks(g.size);
  std::iota(ranks.begin(), ranks.end(), 0);
  g.world_ranks.resize(g.size);
  MPI_Group_translate_ranks(mine, g.size, ranks.data(), world, g.world_ranks.data());
  MPI_Group_free(&mine);
  MPI_Group_free(&world);
  g.worker = std::thread([&g] { g.run_worker(); });
}

Communicator::~Communicator() {
  detail::Group& g = *group_;
  {
    std::lock_guard lock(g.queue_mutex);
    g.stopping = true;
  }
  g.queue_cv.notify_one();
  if (g.worker.joinable()) g.worker.join();  // drains the queue: pending work completes
  std::lock_guard lock(g.ctl_mutex);
  // Drop stray watchdog messages so they do not outlive the communicator.
  for (int tag : {kQueryTag, kAnswerTag}) {
    for (;;) {
      int flag = 0;
      MPI_Status st;
      MPI_Iprobe(MPI_ANY_SOURCE, tag, g.ctl, &flag, &st);
      if (!flag) break;
      int64_t junk[2];
      MPI_Recv(junk, 2, MPI_INT64_T, st.MPI_SOURCE, tag, g.ctl, MPI_STATUS_IGNORE);
    }
  }
  g.closed = true;
  MPI_Comm_free(&g.comm);
  MPI_Comm_free(&g.ctl);
}

int Communicator::rank() const { return group_->rank; }
int Communicator::size() const { return group_->size; }
const std::string& Communicator::name() const { return group_->name; }
const CommOptions& Communicator::options() const { return group_->options; }
void Communicator::set_timeout(double seconds) {
  TRI_CHECK(seconds > 0, "timeout must be positive, got {}", seconds);
  group_->options.timeout_s = seconds;
}
void Communicator::set_debug(bool on) { group_->options.debug = on; }
void Communicator::set_timeout_action(TimeoutAction a) { group_->options.on_timeout = a; }
MPI_Comm Communicator::mpi_comm() const { return group_->comm; }
uint64_t Communicator::collectives_issued() const { return group_->issued.load(); }
uint64_t Communicator::bytes_sent() const { return group_->bytes_sent.load(); }

namespace {

// Issues one collective: numbers it, then hands `body` to the group's worker, which checks
// signatures first in debug mode. `body` runs on the worker thread and may throw.
Work issue(const std::shared_ptr<detail::Group>& gp, Signature sig,
           std::function<void(detail::Group&)> body) {
  sig.seq = gp->issued.fetch_add(1) + 1;
  auto state = std::make_shared<detail::WorkState>();
  state->sig = sig;
  state->group = gp;
  const bool debug = gp->options.debug;
  gp->enqueue([state, debug, body = std::move(body)] {
    detail::Group& g = *state->group;
    try {
      if (debug) g.check_signature(state->sig);
      body(g);
      state->finish(nullptr);
    } catch (...) {
      state->finish(std::current_exception());
    }
  });
  return Work(state);
}

// Bytes a rank sends to the others in a bandwidth-optimal ring over `size` ranks: a
// reduce-scatter or an all-gather of a `total`-byte buffer moves (size - 1) / size of it, an
// allreduce both phases.
uint64_t ring_bytes(int64_t total, int size, int phases) {
  return static_cast<uint64_t>(phases * total * (size - 1) / std::max(1, size));
}

void scale(void* buf, int64_t n, DType d, int size) {
  if (d == DType::kF32) {
    float* p = static_cast<float*>(buf);
    const float inv = 1.0f / static_cast<float>(size);
    for (int64_t i = 0; i < n; ++i) p[i] *= inv;
  } else if (d == DType::kF64) {
    double* p = static_cast<double*>(buf);
    const double inv = 1.0 / size;
    for (int64_t i = 0; i < n; ++i) p[i] *= inv;
  }
}

void check_counts(const detail::Group& g, std::span<const int64_t> counts, const char* what) {
  TRI_CHECK(static_cast<int>(counts.size()) == g.size,
            "{} on group {}: counts has {} entries, expected one per rank ({})", what, g.name,
            counts.size(), g.size);
  for (int64_t c : counts) TRI_CHECK(c >= 0, "{} on group {}: negative count {}", what, g.name, c);
}

}  // namespace

Work Communicator::allreduce_raw(void* buf, int64_t count, DType dtype, ReduceOp op) {
  TRI_CHECK(dtype != DType::kBF16, "allreduce on group {}: MPI has no bf16 sum; use "
            "allreduce_bf16 on the fp32 values", name());
  TRI_CHECK(op != ReduceOp::kAvg || is_floating(dtype),
            "allreduce on group {}: op avg needs a floating dtype, got {}", name(), to_string(dtype));
  const int n = to_int_count(count, "allreduce");
  Signature sig{OpKind::kAllreduce, dtype, op, -1, count, 0, 0};
  group_->bytes_sent += ring_bytes(count * static_cast<int64_t>(dtype_size(dtype)), size(), 2);
  return issue(group_, sig, [=](detail::Group& g) {
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, buf, n, mpi_type(dtype), mpi_op(op), g.comm),
              "MPI_Allreduce", g.name);
    if (op == ReduceOp::kAvg) scale(buf, count, dtype, g.size);
  });
}

Work Communicator::reduce_scatter_raw(const void* in, int64_t in_count, void* out,
                                      int64_t out_count, std::span<const int64_t> counts,
                                      DType dtype, ReduceOp op) {
  const detail::Group& g0 = *group_;
  TRI_CHECK(op != ReduceOp::kAvg || is_floating(dtype),
            "reduce_scatter on group {}: op avg needs a floating dtype", g0.name);
  TRI_CHECK(dtype != DType::kBF16, "reduce_scatter on group {}: MPI has no bf16 sum; use "
            "reduce_scatter_bf16_v on the fp32 values", g0.name);
  Signature sig{OpKind::kReduceScatter, dtype, op, -1, in_count, 0, 0};
  group_->bytes_sent += ring_bytes(in_count * static_cast<int64_t>(dtype_size(dtype)), g0.size, 1);
  if (counts.empty()) {
    TRI_CHECK(in_count == out_count * g0.size,
              "reduce_scatter on group {}: input has {} elements, expected size ({}) x output "
              "({}) = {}; for sizes not divisible by the group use reduce_scatter_v",
              g0.name, in_count, g0.size, out_count, out_count * g0.size);
    const int n = to_int_count(out_count, "reduce_scatter");
    return issue(group_, sig, [=](detail::Group& g) {
      check_mpi(MPI_Reduce_scatter_block(in, out, n, mpi_type(dtype), mpi_op(op), g.comm),
                "MPI_Reduce_scatter_block", g.name);
      if (op == ReduceOp::kAvg) scale(out, out_count, dtype, g.size);
    });
  }
  check_counts(g0, counts, "reduce_scatter_v");
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  TRI_CHECK(in_count == total && out_count == counts[g0.rank],
            "reduce_scatter_v on group {}: input has {} elements (expected sum(counts) = {}), "
            "output {} (expected counts[{}] = {})",
            g0.name, in_count, total, out_count, g0.rank, counts[g0.rank]);
  to_int_count(total, "reduce_scatter_v");
  std::vector<int> icounts(counts.begin(), counts.end());
  sig.counts_hash = fnv1a(counts.data(), counts.size_bytes()) | 1;
  return issue(group_, sig, [=](detail::Group& g) {
    check_mpi(MPI_Reduce_scatter(in, out, icounts.data(), mpi_type(dtype), mpi_op(op), g.comm),
              "MPI_Reduce_scatter", g.name);
    if (op == ReduceOp::kAvg) scale(out, out_count, dtype, g.size);
  });
}

Work Communicator::all_gather_raw(const void* in, int64_t in_count, void* out, int64_t out_count,
                                  std::span<const int64_t> counts, DType dtype) {
  const detail::Group& g0 = *group_;
  const size_t es = dtype_size(dtype);
  Signature sig{OpKind::kAllGather, dtype, ReduceOp::kSum, -1, out_count, 0, 0};
  group_->bytes_sent += static_cast<uint64_t>(in_count * static_cast<int64_t>(es) * (g0.size - 1));
  if (counts.empty()) {
    TRI_CHECK(out_count == in_count * g0.size,
              "all_gather on group {}: output has {} elements, expected size ({}) x input ({}) "
              "= {}; for sizes not divisible by the group use all_gather_v",
              g0.name, out_count, g0.size, in_count, in_count * g0.size);
    const int n = to_int_count(in_count, "all_gather");
    to_int_count(out_count, "all_gather");
    const bool in_place =
        n > 0 && in == static_cast<const char*>(out) + static_cast<size_t>(g0.rank) * n * es;
    return issue(group_, sig, [=](detail::Group& g) {
      check_mpi(MPI_Allgather(in_place ? MPI_IN_PLACE : in, n, mpi_type(dtype), out, n,
                              mpi_type(dtype), g.comm),
                "MPI_Allgather", g.name);
    });
  }
  check_counts(g0, counts, "all_gather_v");
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  TRI_CHECK(out_count == total && in_count == counts[g0.rank],
            "all_gather_v on group {}: output has {} elements (expected sum(counts) = {}), "
            "input {} (expected counts[{}] = {})",
            g0.name, out_count, total, in_count, g0.rank, counts[g0.rank]);
  to_int_count(total, "all_gather_v");
  std::vector<int> icounts(counts.begin(), counts.end());
  std::vector<int> displs(counts.size(), 0);
  for (size_t r = 1; r < counts.size(); ++r) displs[r] = displs[r - 1] + icounts[r - 1];
  const bool in_place = in_count > 0 &&
      in == static_cast<const char*>(out) + static_cast<size_t>(displs[g0.rank]) * es;
  sig.counts_hash = fnv1a(counts.data(), counts.size_bytes()) | 1;
  const int n = static_cast<int>(in_count);
  return issue(group_, sig, [=](detail::Group& g) {
    check_mpi(MPI_Allgatherv(in_place ? MPI_IN_PLACE : in, n, mpi_type(dtype), out,
                             icounts.data(), displs.data(), mpi_type(dtype), g.comm),
              "MPI_Allgatherv", g.name);
  });
}

namespace {

// MPI_Alltoallv's int counts and displacements of per-rank element counts.
struct IntLayout {
  std::vector<int> counts, displs;
};
IntLayout int_layout(std::span<const int64_t> counts, const char* what) {
  IntLayout l;
  int64_t at = 0;
  for (int64_t c : counts) {
    l.counts.push_back(to_int_count(c, what));
    l.displs.push_back(to_int_count(at, what));
    at += c;
  }
  to_int_count(at, what);
  return l;
}

// Debug mode: rank s's send count to r must be r's receive count from s. Every rank learns the
// first mismatch of the group (the lowest receiving rank's), so all throw the same error.
void check_exchange_counts(detail::Group& g, const std::vector<int64_t>& send, const std::vector<int64_t>& recv) {
  std::vector<int64_t> told(static_cast<std::size_t>(g.size));
  check_mpi(MPI_Alltoall(send.data(), 1, MPI_INT64_T, told.data(), 1, MPI_INT64_T, g.comm),
            "all_to_all_v count check (MPI_Alltoall)", g.name);
  // {receiver, sender, sent, expected}, or {size, ...} when this rank agrees with everyone.
  int64_t mine[4] = {g.size, 0, 0, 0};
  for (int s = 0; s < g.size; ++s) {
    if (told[s] != recv[s]) {
      mine[0] = g.rank, mine[1] = s, mine[2] = told[s], mine[3] = recv[s];
      break;
    }
  }
  std::vector<int64_t> all(static_cast<std::size_t>(4 * g.size));
  check_mpi(MPI_Allgather(mine, 4, MPI_INT64_T, all.data(), 4, MPI_INT64_T, g.comm),
            "all_to_all_v count check (MPI_Allgather)", g.name);
  for (int r = 0; r < g.size; ++r) {
    const int64_t* m = all.data() + 4 * r;
    if (m[0] == g.size) continue;
    throw Error(fmt::format(
        "all_to_all_v on group {}: {} sends {} elements to {} but that rank expects {} from it. "
        "Exchange the counts first (all_to_all of one count per rank) and pass each rank's "
        "received counts as its recv_counts",
        g.name, g.who(static_cast<int>(m[1])), m[2], g.who(static_cast<int>(m[0])), m[3]));
  }
}

}  // namespace

Work Communicator::all_to_all_raw(const void* in, int64_t in_count, std::span<const int64_t> send_counts,
                                  void* out, int64_t out_count, std::span<const int64_t> recv_counts,
                                  DType dtype) {
  const detail::Group& g0 = *group_;
  Signature sig{OpKind::kAllToAll, dtype, ReduceOp::kSum, -1, in_count, 0, 0};
  if (send_counts.empty() && recv_counts.empty()) {
    TRI_CHECK(in_count == out_count && in_count % g0.size == 0,
              "all_to_all on group {}: input has {} and output {} elements; both must be size ({}) x "
              "the chunk; for variable chunks use all_to_all_v",
              g0.name, in_count, out_count, g0.size);
    const int n = to_int_count(in_count / g0.size, "all_to_all");
    return issue(group_, sig, [=](detail::Group& g) {
      check_mpi(MPI_Alltoall(in, n, mpi_type(dtype), out, n, mpi_type(dtype), g.comm), "MPI_Alltoall",
                g.name);
    });
  }
  check_counts(g0, send_counts, "all_to_all_v send_counts");
  check_counts(g0, recv_counts, "all_to_all_v recv_counts");
  const int64_t sent = std::accumulate(send_counts.begin(), send_counts.end(), int64_t{0});
  const int64_t received = std::accumulate(recv_counts.begin(), recv_counts.end(), int64_t{0});
  TRI_CHECK(in_count == sent && out_count == received,
            "all_to_all_v on group {}: input has {} elements (expected sum(send_counts) = {}), output "
            "{} (expected sum(recv_counts) = {})",
            g0.name, in_count, sent, out_count, received);
  // Totals differ between ranks: the signature compares the group size instead.
  sig.count = g0.size;
  const IntLayout s = int_layout(send_counts, "all_to_all_v"), r = int_layout(recv_counts, "all_to_all_v");
  std::vector<int64_t> send(send_counts.begin(), send_counts.end()), recv(recv_counts.begin(), recv_counts.end());
  const bool debug = g0.options.debug;
  return issue(group_, sig, [=](detail::Group& g) {
    if (debug) check_exchange_counts(g, send, recv);
    check_mpi(MPI_Alltoallv(in, s.counts.data(), s.displs.data(), mpi_type(dtype), out, r.counts.data(),
                            r.displs.data(), mpi_type(dtype), g.comm),
              "MPI_Alltoallv", g.name);
  });
}

namespace {

// The bf16 sum's exchange (see allreduce_bf16 in the header), on the worker thread: `wire` holds
// this rank's bf16 values laid out by `counts`; returns this rank's chunk of the bf16 sum.
std::vector<kernels::bf16_t> exchange_bf16_sum(detail::Group& g, const std::vector<kernels::bf16_t>& wire,
                                               const std::vector<int64_t>& counts, const char* what) {
  const IntLayout send = int_layout(counts, what);
  const int mine = send.counts[static_cast<std::size_t>(g.rank)];
  std::vector<int> rcounts(static_cast<std::size_t>(g.size), mine), rdispls(static_cast<std::size_t>(g.size));
  for (int s = 0; s < g.size; ++s) rdispls[static_cast<std::size_t>(s)] = to_int_count(int64_t{s} * mine, what);
  std::vector<kernels::bf16_t> got(static_cast<std::size_t>(g.size) * static_cast<std::size_t>(mine));
  check_mpi(MPI_Alltoallv(wire.data(), send.counts.data(), send.displs.data(), MPI_UINT16_T, got.data(),
                          rcounts.data(), rdispls.data(), MPI_UINT16_T, g.comm),
            "MPI_Alltoallv (bf16 sum)", g.name);
  std::vector<kernels::bf16_t> sum(static_cast<std::size_t>(mine));
  sum_bf16_chunks(got.data(), g.size, mine, sum.data());
  return sum;
}

}  // namespace

Work Communicator::allreduce_bf16(std::span<float> buf) {
  const int64_t count = static_cast<int64_t>(buf.size());
  to_int_count(count, "allreduce_bf16");
  Signature sig{OpKind::kAllreduce, DType::kBF16, ReduceOp::kSum, -1, count, 0, 0};
  {
    // What the all_to_all_v and the all_gather_v send: every chunk but this rank's, then this
    // rank's chunk to each other rank.
    const int64_t mine = chunk_counts(count, size())[static_cast<std::size_t>(rank())];
    group_->bytes_sent += static_cast<uint64_t>(2 * ((count - mine) + mine * (size() - 1)));
  }
  float* data = buf.data();
  return issue(group_, sig, [=](detail::Group& g) {
    const std::vector<int64_t> counts = chunk_counts(count, g.size);
    std::vector<kernels::bf16_t> wire(static_cast<std::size_t>(count));
    round_to_bf16(data, count, wire.data());
    const std::vector<kernels::bf16_t> sum = exchange_bf16_sum(g, wire, counts, "allreduce_bf16");
    const IntLayout l = int_layout(counts, "allreduce_bf16");
    check_mpi(MPI_Allgatherv(sum.data(), static_cast<int>(sum.size()), MPI_UINT16_T, wire.data(),
                             l.counts.data(), l.displs.data(), MPI_UINT16_T, g.comm),
              "MPI_Allgatherv (bf16 sum)", g.name);
    widen_from_bf16(wire.data(), count, data);
  });
}

Work Communicator::reduce_scatter_bf16_v(std::span<const float> in, std::span<float> out,
                                         std::span<const int64_t> counts_in) {
  const detail::Group& g0 = *group_;
  check_counts(g0, counts_in, "reduce_scatter_bf16_v");
  const int64_t total = std::accumulate(counts_in.begin(), counts_in.end(), int64_t{0});
  TRI_CHECK(static_cast<int64_t>(in.size()) == total && static_cast<int64_t>(out.size()) == counts_in[g0.rank],
            "reduce_scatter_bf16_v on group {}: input has {} elements (expected sum(counts) = {}), "
            "output {} (expected counts[{}] = {})",
            g0.name, in.size(), total, out.size(), g0.rank, counts_in[g0.rank]);
  to_int_count(total, "reduce_scatter_bf16_v");
  Signature sig{OpKind::kReduceScatter, DType::kBF16, ReduceOp::kSum, -1, total, 0, 0};
  group_->bytes_sent += static_cast<uint64_t>(2 * (total - counts_in[g0.rank]));
  sig.counts_hash = fnv1a(counts_in.data(), counts_in.size_bytes()) | 1;
  std::vector<int64_t> counts(counts_in.begin(), counts_in.end());
  const float* src = in.data();
  float* dst = out.data();
  return issue(group_, sig, [=](detail::Group& g) {
    std::vector<kernels::bf16_t> wire(static_cast<std::size_t>(total));
    round_to_bf16(src, total, wire.data());
    const std::vector<kernels::bf16_t> sum = exchange_bf16_sum(g, wire, counts, "reduce_scatter_bf16_v");
    widen_from_bf16(sum.data(), static_cast<int64_t>(sum.size()), dst);
  });
}

Work Communicator::broadcast_raw(void* buf, int64_t count, DType dtype, int root) {
  TRI_CHECK(root >= 0 && root < size(), "broadcast on group {}: root {} is not a rank of a "
            "group of size {}", name(), root, size());
  const int n = to_int_count(count, "broadcast");
  Signature sig{OpKind::kBroadcast, dtype, ReduceOp::kSum, root, count, 0, 0};
  return issue(group_, sig, [=](detail::Group& g) {
    check_mpi(MPI_Bcast(buf, n, mpi_type(dtype), root, g.comm), "MPI_Bcast", g.name);
  });
}

Work Communicator::barrier() {
  Signature sig{OpKind::kBarrier, DType::kU8, ReduceOp::kSum, -1, 0, 0, 0};
  return issue(group_, sig, [](detail::Group& g) {
    check_mpi(MPI_Barrier(g.comm), "MPI_Barrier", g.name);
  });
}

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

void check_same_across_ranks(Communicator& comm, std::string_view what, uint64_t hash) {
  std::vector<uint64_t> all(comm.size());
  std::span<const uint64_t> mine(&hash, 1);
  comm.all_gather(mine, std::span<uint64_t>(all)).wait();
  std::map<uint64_t, std::vector<int>> by_hash;
  for (int r = 0; r < comm.size(); ++r) by_hash[all[r]].push_back(r);
  if (by_hash.size() == 1) return;
  std::string groups;
  for (const auto& [h, ranks] : by_hash) {
    groups += fmt::format("{}ranks [{}] have {:016x}", groups.empty() ? "" : "; ",
                          join_ints(ranks), h);
  }
  throw Error(fmt::format("ranks of group {} disagree on {}: {}. Start every rank with the same "
                          "{} (same files, flags and environment)",
                          comm.name(), what, groups, what));
}

void abort_job(const std::string& message, int code) {
  static std::atomic<bool> aborting{false};
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  const bool mpi_up = initialized && !finalized;
  int rank = 0, size = 1;
  if (mpi_up) {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
  }
  if (!aborting.exchange(true)) {
    if (size > 1) {
      std::fprintf(stderr, "[rank %d] error: %s\n", rank, message.c_str());
    } else {
      std::fprintf(stderr, "error: %s\n", message.c_str());
    }
    std::fflush(stderr);
  }
  // Alone there is nobody to stop, and MPI_Abort would only add OpenMPI's banner.
  if (mpi_up && size > 1) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

}  // namespace trident::comm
