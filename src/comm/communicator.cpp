// Communicator implementation: a worker thread per group running blocking MPI collectives in
// issue order, signature checks in debug mode, and the watchdog's who-did-not-arrive query.
#include "comm/communicator.h"

#include <mpi.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <numeric>

#include "comm/communicator_detail.h"

namespace trident::comm {

using namespace detail;  // the shared internals (communicator_detail.h)

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

namespace {

// Asks every other member which call it has reached, for a grace period, and builds the
// watchdog's message. Best effort: a rank busy outside communication cannot answer and is
// reported as not arrived, which is also what makes the others wait.
std::string diagnose_timeout(detail::WorkState& s, double waited) {
  detail::Group& g = *s.group;
  const int64_t asked = static_cast<int64_t>(s.sig.seq);
  std::map<int, int64_t> answers;
  if (!s.p2p) {
    const double grace = std::clamp(g.options.timeout_s / 4, 0.5, 2.0);
    answers = g.backend->ask_progress(asked, grace, [&g] { g.service_queries(); });
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
        flag = s.request->test();
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
  if (!s.done && s.p2p && s.request->test()) s.done = true;
  if (s.done && s.error) std::rethrow_exception(s.error);
  return s.done;
}

bool Work::is_completed() const {
  if (!state_) return true;
  std::lock_guard lock(state_->mutex);
  return state_->done;
}

Communicator::Communicator(std::unique_ptr<detail::Backend> backend, std::string name,
                           CommOptions options)
    : group_(std::make_shared<detail::Group>()) {
  TRI_CHECK(backend != nullptr, "Communicator {}: null backend", name);
  detail::Group& g = *group_;
  g.name = std::move(name);
  g.name_hash = fnv1a(g.name.data(), g.name.size());
  g.options = options;
  g.backend = std::move(backend);
  g.rank = g.backend->rank();
  g.size = g.backend->size();
  g.world_ranks = g.backend->world_ranks();
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
  g.backend->close();
}

std::unique_ptr<Communicator> Communicator::split(int color, int key, std::string name) {
  return split_by([color, key, name](detail::Backend& b) { return b.split(color, key, name); }, name);
}

std::unique_ptr<Communicator> Communicator::split_node(std::string name) {
  return split_by([name](detail::Backend& b) { return b.split_node(name); }, name);
}

std::string Communicator::node_name() const { return group_->backend->node_name(); }

std::unique_ptr<Communicator> Communicator::split_by(
    std::function<std::unique_ptr<detail::Backend>(detail::Backend&)> make, std::string name) {
  // On the worker, in issue order with the group's collectives (not numbered: no Work). The
  // state is shared so that a wait given up (timeout) leaves the worker nothing dangling.
  struct Pending {
    detail::WorkState state;
    std::unique_ptr<detail::Backend> sub;
  };
  auto p = std::make_shared<Pending>();
  group_->enqueue([p, gp = group_, make = std::move(make)] {
    try {
      p->sub = make(*gp->backend);
      p->state.finish(nullptr);
    } catch (...) {
      p->state.finish(std::current_exception());
    }
  });
  std::unique_lock lock(p->state.mutex);
  const auto limit = std::chrono::duration<double>(group_->options.timeout_s);
  if (!p->state.cv.wait_for(lock, limit, [&] { return p->state.done; })) {
    std::string msg = fmt::format(
        "watchdog: split of group {} into {} did not complete within {:.1f} s (this is {} of the "
        "group): a rank of {} did not take part. Every rank of a group must split it",
        group_->name, name, group_->options.timeout_s, group_->who(group_->rank), group_->name);
    if (group_->options.on_timeout == TimeoutAction::kAbort) abort_job(msg, 1);
    throw Error(msg);
  }
  if (p->state.error) std::rethrow_exception(p->state.error);
  if (!p->sub) return nullptr;
  return std::make_unique<Communicator>(std::move(p->sub), std::move(name), group_->options);
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
detail::Backend& Communicator::backend() const { return *group_->backend; }
uint64_t Communicator::collectives_issued() const { return group_->issued.load(); }
uint64_t Communicator::bytes_sent() const { return group_->bytes_sent.load(); }

namespace detail {

Work issue(const std::shared_ptr<Group>& gp, Signature sig,
           std::function<void(Group&)> body) {
  sig.seq = gp->issued.fetch_add(1) + 1;
  auto state = std::make_shared<WorkState>();
  state->sig = sig;
  state->group = gp;
  const bool debug = gp->options.debug;
  gp->enqueue([state, debug, body = std::move(body)] {
    Group& g = *state->group;
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

uint64_t ring_bytes(int64_t total, int size, int phases) {
  return static_cast<uint64_t>(phases * total * (size - 1) / std::max(1, size));
}

void check_counts(const Group& g, std::span<const int64_t> counts, const char* what) {
  TRI_CHECK(static_cast<int>(counts.size()) == g.size,
            "{} on group {}: counts has {} entries, expected one per rank ({})", what, g.name,
            counts.size(), g.size);
  for (int64_t c : counts) TRI_CHECK(c >= 0, "{} on group {}: negative count {}", what, g.name, c);
}

}  // namespace detail

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

void throw_if_root_failed(Communicator& comm, const std::string& error, int root) {
  int64_t size = comm.rank() == root ? static_cast<int64_t>(error.size()) : 0;
  comm.broadcast(std::span<int64_t>(&size, 1), root).wait();
  if (size == 0) return;
  std::vector<uint8_t> bytes(error.begin(), error.end());
  bytes.resize(static_cast<size_t>(size));
  comm.broadcast(std::span<uint8_t>(bytes), root).wait();
  throw Error(std::string(bytes.begin(), bytes.end()));
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
