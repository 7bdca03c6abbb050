// Internals the Communicator's source files share: the group (its backend, worker thread,
// watchdog answers and debug-mode signature check), a collective's completion state, count
// helpers, and the declarations of what one file defines for the others. communicator.cpp holds
// groups, Work and the watchdog; collectives.cpp, all_to_all.cpp, bf16_collectives.cpp and
// point_to_point.cpp the operations, which the group's Backend (comm/backend.h) carries.
// Not part of the public interface (comm/communicator.h).
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "comm/backend.h"
#include "comm/communicator.h"
#include "core/check.h"

namespace trident::comm::detail {

using Clock = std::chrono::steady_clock;

constexpr double kServiceAfterS = 0.05;  // waits longer than this answer watchdog queries
constexpr int kSpinIterations = 200;     // yields before sleeping (in wait and in the worker)

inline double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

inline bool is_floating(DType d) { return d == DType::kF32 || d == DType::kF64; }

inline int to_int_count(int64_t n, const char* what) {
  TRI_CHECK(n >= 0 && n <= INT_MAX, "{}: {} elements do not fit MPI's int count (max {}); split "
            "the buffer", what, n, INT_MAX);
  return static_cast<int>(n);
}

inline uint64_t fnv1a(const void* data, size_t bytes, uint64_t h = 1469598103934665603ull) {
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

inline WireSig to_wire(const Signature& s, uint64_t name_hash) {
  return WireSig{static_cast<int32_t>(s.kind), static_cast<int32_t>(s.dtype),
                 static_cast<int32_t>(s.op), s.root, s.count, s.counts_hash, s.seq, name_hash};
}

inline Signature from_wire(const WireSig& w) {
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

inline bool same(const WireSig& a, const WireSig& b) { return std::memcmp(&a, &b, sizeof a) == 0; }

inline std::string join_ints(const std::vector<int>& v) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + std::to_string(v[i]);
  return out;
}

struct Group {
  std::unique_ptr<Backend> backend;  // collectives on the worker thread; p2p and watchdog any
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
  void service_queries() { backend->answer_queries(issued.load()); }

  // Debug mode: every rank contributes its signature; all ranks see the same table and so
  // all throw the same error naming the first rank that disagrees with rank 0.
  void check_signature(const Signature& mine) {
    WireSig w = to_wire(mine, name_hash);
    std::vector<WireSig> all(size);
    backend->all_gather(&w, static_cast<int>(sizeof w), all.data(), false, DType::kU8);
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
  std::unique_ptr<P2pRequest> request;  // send/recv only
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


// Issues one collective: numbers it, then hands `body` to the group's worker, which checks
// signatures first in debug mode. `body` runs on the worker thread and may throw.
Work issue(const std::shared_ptr<Group>& gp, Signature sig, std::function<void(Group&)> body);

// Bytes a rank sends to the others in a bandwidth-optimal ring over `size` ranks: a
// reduce-scatter or an all-gather of a `total`-byte buffer moves (size - 1) / size of it, an
// allreduce both phases.
uint64_t ring_bytes(int64_t total, int size, int phases);

// Throws unless counts has one non-negative entry per rank of g.
void check_counts(const Group& g, std::span<const int64_t> counts, const char* what);

// The int counts and displacements (IntLayout, comm/backend.h) of per-rank element counts.
IntLayout int_layout(std::span<const int64_t> counts, const char* what);

}  // namespace trident::comm::detail
