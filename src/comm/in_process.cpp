// The in-process backend (comm/in_process.h): ranks are threads; a group's state is one shared
// object holding, per call number, every rank's posted arguments. A collective is
//   arrive (post my arguments, wait for all) -> compute my result into a private buffer from
//   everyone's inputs -> depart (wait until all have read) -> write my output,
// so in-place calls are safe: nobody writes a buffer another rank may still be reading.
#include "comm/in_process.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>
#include <tuple>

#include "comm/backend.h"
#include "core/check.h"

namespace trident::comm {

namespace {

using detail::IntLayout;
using detail::P2pRequest;

// Raised in the ranks still communicating after another rank failed.
class WorldAborted : public Error {
 public:
  using Error::Error;
};

constexpr auto kPoll = std::chrono::milliseconds(20);  // how often blocked ranks look at abort

struct SharedGroup {
  SharedGroup(std::vector<int> world, std::shared_ptr<std::atomic<bool>> abort_flag)
      : size(static_cast<int>(world.size())), world_ranks(std::move(world)),
        aborted(std::move(abort_flag)), reached(static_cast<size_t>(size)) {
    for (auto& r : reached) r.store(-1);
  }

  const int size;
  const std::vector<int> world_ranks;
  const std::shared_ptr<std::atomic<bool>> aborted;  // the whole world's

  std::mutex m;
  std::condition_variable cv;
  struct Slot {
    std::vector<const void*> posted;
    int arrived = 0, departed = 0;
  };
  std::map<uint64_t, Slot> slots;  // call number -> its rendezvous
  std::map<uint64_t, std::map<int, std::shared_ptr<SharedGroup>>> splits;  // call -> color -> group
  struct Mailbox {
    uint64_t sent = 0, posted = 0;
    std::map<uint64_t, std::vector<char>> messages;  // send number -> bytes
  };
  std::map<std::tuple<int, int, int>, Mailbox> mail;  // (source, destination, tag)
  std::vector<std::atomic<int64_t>> reached;  // calls issued, as each rank last answered; -1 none

  void check_alive() const {
    if (aborted->load()) {
      throw WorldAborted("in-process world aborted: another rank failed (its error is the one "
                         "run_in_process rethrows)");
    }
  }
  // Waits (lock held) until pred, waking to notice an abort.
  template <class P> void wait(std::unique_lock<std::mutex>& lock, P pred) {
    while (!pred()) {
      check_alive();
      cv.wait_for(lock, kPoll);
    }
  }
};

template <class T> void fold(T* acc, const T* x, int n, ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg:
      for (int i = 0; i < n; ++i) acc[i] = static_cast<T>(acc[i] + x[i]);
      break;
    case ReduceOp::kMax:
      for (int i = 0; i < n; ++i) acc[i] = std::max(acc[i], x[i]);
      break;
    case ReduceOp::kMin:
      for (int i = 0; i < n; ++i) acc[i] = std::min(acc[i], x[i]);
      break;
  }
}

void fold_bytes(void* acc, const void* x, int n, DType d, ReduceOp op) {
  switch (d) {
    case DType::kF32: return fold(static_cast<float*>(acc), static_cast<const float*>(x), n, op);
    case DType::kF64: return fold(static_cast<double*>(acc), static_cast<const double*>(x), n, op);
    case DType::kI32: return fold(static_cast<int32_t*>(acc), static_cast<const int32_t*>(x), n, op);
    case DType::kI64: return fold(static_cast<int64_t*>(acc), static_cast<const int64_t*>(x), n, op);
    case DType::kU8: return fold(static_cast<uint8_t*>(acc), static_cast<const uint8_t*>(x), n, op);
    case DType::kU64:
      return fold(static_cast<uint64_t*>(acc), static_cast<const uint64_t*>(x), n, op);
    case DType::kBF16: break;
  }
  TRI_FAIL("in-process backend: no reduction of dtype {}", to_string(d));
}

// What a rank posts for one collective.
struct Post {
  const void* in = nullptr;
  const IntLayout* layout = nullptr;  // all_to_all_v: its send layout
  int color = 0, key = 0;             // split
};

class SendDone final : public P2pRequest {
 public:
  bool test() override { return true; }
};

class Receive final : public P2pRequest {
 public:
  Receive(std::shared_ptr<SharedGroup> g, std::tuple<int, int, int> box, uint64_t ticket, void* buf,
          size_t bytes, std::string name)
      : g_(std::move(g)), box_(box), ticket_(ticket), buf_(buf), bytes_(bytes), name_(std::move(name)) {}
  bool test() override {
    std::lock_guard lock(g_->m);
    auto& box = g_->mail[box_];
    auto it = box.messages.find(ticket_);
    if (it == box.messages.end()) {
      g_->check_alive();
      return false;
    }
    std::vector<char> msg = std::move(it->second);
    box.messages.erase(it);
    TRI_CHECK(msg.size() <= bytes_, "recv on group {}: the message from rank {} (tag {}) has {} "
              "bytes, more than the {}-byte receive buffer; post a receive of the sent count",
              name_, std::get<0>(box_), std::get<2>(box_), msg.size(), bytes_);
    if (!msg.empty()) std::memcpy(buf_, msg.data(), msg.size());
    return true;
  }

 private:
  std::shared_ptr<SharedGroup> g_;
  std::tuple<int, int, int> box_;
  uint64_t ticket_;
  void* buf_;
  size_t bytes_;
  std::string name_;
};

class InProcessBackend final : public detail::Backend {
 public:
  InProcessBackend(std::shared_ptr<SharedGroup> g, int rank, std::string name)
      : g_(std::move(g)), rank_(rank), name_(std::move(name)) {}

  int rank() const override { return rank_; }
  int size() const override { return g_->size; }
  std::vector<int> world_ranks() const override { return g_->world_ranks; }

  void allreduce(void* buf, int n, DType d, ReduceOp op) override {
    const size_t es = dtype_size(d);
    collective(Post{buf}, [&](const std::vector<const Post*>& all, std::vector<char>& tmp) {
      reduce(all, 0, n, d, op, tmp);
      return [=, &tmp] { copy(buf, tmp.data(), n * es); };
    });
  }
  void reduce_scatter_block(const void* in, void* out, int n, DType d, ReduceOp op) override {
    const size_t es = dtype_size(d);
    collective(Post{in}, [&](const std::vector<const Post*>& all, std::vector<char>& tmp) {
      reduce(all, static_cast<size_t>(rank_) * n * es, n, d, op, tmp);
      return [=, &tmp] { copy(out, tmp.data(), n * es); };
    });
  }
  void reduce_scatter(const void* in, void* out, const std::vector<int>& counts, DType d,
                      ReduceOp op) override {
    const size_t es = dtype_size(d);
    size_t at = 0;
    for (int r = 0; r < rank_; ++r) at += static_cast<size_t>(counts[r]);
    const int n = counts[rank_];
    collective(Post{in}, [&](const std::vector<const Post*>& all, std::vector<char>& tmp) {
      reduce(all, at * es, n, d, op, tmp);
      return [=, &tmp] { copy(out, tmp.data(), n * es); };
    });
  }
  void all_gather(const void* in, int n, void* out, bool in_place, DType d) override {
    const size_t es = dtype_size(d), chunk = static_cast<size_t>(n) * es;
    const void* mine = in_place ? static_cast<const char*>(out) + rank_ * chunk : in;
    collective(Post{mine}, [&](const std::vector<const Post*>& all, std::vector<char>& tmp) {
      tmp.resize(chunk * all.size());
      for (size_t s = 0; s < all.size(); ++s) copy(tmp.data() + s * chunk, all[s]->in, chunk);
      return [=, &tmp] { copy(out, tmp.data(), tmp.size()); };
    });
  }
  void all_gather_v(const void* in, int n, void* out, const IntLayout& l, bool in_place,
                    DType d) override {
    const size_t es = dtype_size(d);
    const void* mine = in_place ? static_cast<const char*>(out) + l.displs[rank_] * es : in;
    (void)n;  // == l.counts[rank_], checked by the Communicator
    collective(Post{mine}, [&](const std::vector<const Post*>& all, std::vector<char>& tmp) {
      size_t end = 0;
      for (size_t s = 0; s < all.size(); ++s) end = std::max(end, (l.displs[s] + size_t(l.counts[s])) * es);
      tmp.resize(end);
      for (size_t s = 0; s < all.size(); ++s) {
        copy(tmp.data() + l.displs[s] * es, all[s]->in, l.counts[s] * es);
      }
      return [=, &tmp, &l] {
        for (size_t s = 0; s < l.counts.size(); ++s) {
          copy(static_cast<char*>(out) + l.displs[s] * es, tmp.data() + l.displs[s] * es,
               l.counts[s] * es);
        }
      };
    });
  }
  void broadcast(void* buf, int n, DType d, int root) override {
    const size_t bytes = static_cast<size_t>(n) * dtype_size(d);
    collective(Post{buf}, [&](const std::vector<const Post*>& all, std::vector<char>& tmp) {
      tmp.resize(bytes);
      copy(tmp.data(), all[root]->in, bytes);
      return [=, &tmp] { copy(buf, tmp.data(), bytes); };
    });
  }
  void barrier() override {
    collective(Post{}, [](const std::vector<const Post*>&, std::vector<char>&) { return [] {}; });
  }
  void all_to_all(const void* in, int n, void* out, DType d) override {
    const size_t chunk = static_cast<size_t>(n) * dtype_size(d);
    collective(Post{in}, [&](const std::vector<const Post*>& all, std::vector<char>& tmp) {
      tmp.resize(chunk * all.size());
      for (size_t s = 0; s < all.size(); ++s) {
        copy(tmp.data() + s * chunk, static_cast<const char*>(all[s]->in) + rank_ * chunk, chunk);
      }
      return [=, &tmp] { copy(out, tmp.data(), tmp.size()); };
    });
  }
  void all_to_all_v(const void* in, const IntLayout& send, void* out, const IntLayout& recv,
                    DType d) override {
    const size_t es = dtype_size(d);
    collective(Post{in, &send}, [&](const std::vector<const Post*>& all, std::vector<char>& tmp) {
      size_t end = 0;
      for (size_t s = 0; s < all.size(); ++s) {
        end = std::max(end, (recv.displs[s] + size_t(recv.counts[s])) * es);
      }
      tmp.resize(end);
      for (size_t s = 0; s < all.size(); ++s) {
        const int sent = all[s]->layout->counts[rank_];
        // MPI's rule: a message longer than its receive is an error (truncation).
        TRI_CHECK(sent <= recv.counts[s], "all_to_all_v on group {}: rank {} sends {} elements "
                  "to rank {}, which receives only {} from it; pass each rank's received counts as "
                  "its recv_counts", name_, s, sent, rank_, recv.counts[s]);
        copy(tmp.data() + recv.displs[s] * es,
             static_cast<const char*>(all[s]->in) + all[s]->layout->displs[rank_] * es, sent * es);
      }
      return [=, &tmp, &recv] {
        for (size_t s = 0; s < recv.counts.size(); ++s) {
          copy(static_cast<char*>(out) + recv.displs[s] * es, tmp.data() + recv.displs[s] * es,
               recv.counts[s] * es);
        }
      };
    });
  }

  std::unique_ptr<P2pRequest> isend(const void* buf, int n, DType d, int peer, int tag) override {
    const size_t bytes = static_cast<size_t>(n) * dtype_size(d);
    std::lock_guard lock(g_->m);
    g_->check_alive();
    auto& box = g_->mail[{rank_, peer, tag}];
    auto& msg = box.messages[box.sent++];
    msg.resize(bytes);
    copy(msg.data(), buf, bytes);
    return std::make_unique<SendDone>();
  }
  std::unique_ptr<P2pRequest> irecv(void* buf, int n, DType d, int peer, int tag) override {
    std::lock_guard lock(g_->m);
    g_->check_alive();
    const std::tuple<int, int, int> key{peer, rank_, tag};
    const uint64_t ticket = g_->mail[key].posted++;
    return std::make_unique<Receive>(g_, key, ticket, buf, static_cast<size_t>(n) * dtype_size(d),
                                     name_);
  }

  void answer_queries(uint64_t issued) override {
    g_->reached[static_cast<size_t>(rank_)].store(static_cast<int64_t>(issued));
  }
  std::map<int, int64_t> ask_progress(int64_t asked, double grace,
                                      const std::function<void()>& service) override {
    const auto start = std::chrono::steady_clock::now();
    for (;;) {
      service();
      bool all = true;
      for (int r = 0; r < g_->size; ++r) all = all && (r == rank_ || g_->reached[r].load() >= asked);
      const double waited =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (all || waited >= grace) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    std::map<int, int64_t> answers;
    for (int r = 0; r < g_->size; ++r) {
      const int64_t v = g_->reached[r].load();
      if (r != rank_ && v >= 0) answers[r] = v;
    }
    return answers;
  }

  std::unique_ptr<Backend> split(int color, int key, const std::string& name) override {
    Post mine;
    mine.color = color, mine.key = key;
    std::shared_ptr<SharedGroup> sub;
    int sub_rank = -1;
    const uint64_t k = collective(mine, [&](const std::vector<const Post*>& all,
                                            std::vector<char>&) -> std::function<void()> {
      if (color < 0) return [] {};
      std::vector<std::pair<int, int>> members;  // (key, rank): MPI_Comm_split's order
      for (int r = 0; r < static_cast<int>(all.size()); ++r) {
        if (all[r]->color == color) members.emplace_back(all[r]->key, r);
      }
      std::sort(members.begin(), members.end());
      std::vector<int> world;
      for (size_t i = 0; i < members.size(); ++i) {
        if (members[i].second == rank_) sub_rank = static_cast<int>(i);
        world.push_back(g_->world_ranks[members[i].second]);
      }
      std::lock_guard lock(g_->m);
      auto& made = g_->splits[k_pending_][color];
      if (!made) made = std::make_shared<SharedGroup>(world, g_->aborted);
      sub = made;
      return [] {};
    });
    if (rank_ == 0) {  // everyone took its group before departing
      std::lock_guard lock(g_->m);
      g_->splits.erase(k);
    }
    if (!sub) return nullptr;
    return std::make_unique<InProcessBackend>(sub, sub_rank, name);
  }
  // One process is one node.
  std::unique_ptr<Backend> split_node(const std::string& name) override { return split(0, rank_, name); }
  std::string node_name() const override { return "in-process"; }

  void close() override {}

 private:
  static void copy(void* dst, const void* src, size_t bytes) {
    if (bytes > 0 && dst != src) std::memmove(dst, src, bytes);
  }

  // tmp <- the reduction, in rank order, of n elements at byte offset `at` of every rank's input.
  static void reduce(const std::vector<const Post*>& all, size_t at, int n, DType d, ReduceOp op,
                     std::vector<char>& tmp) {
    const size_t bytes = static_cast<size_t>(n) * dtype_size(d);
    tmp.resize(bytes);
    copy(tmp.data(), static_cast<const char*>(all[0]->in) + at, bytes);
    for (size_t s = 1; s < all.size(); ++s) {
      fold_bytes(tmp.data(), static_cast<const char*>(all[s]->in) + at, n, d, op);
    }
  }

  // arrive -> compute (returns the write-out step) -> depart -> write out. Returns the call #.
  template <class F> uint64_t collective(const Post& mine, F&& compute) {
    const uint64_t k = ++calls_;
    k_pending_ = k;
    std::vector<const Post*> all(static_cast<size_t>(g_->size));
    {
      std::unique_lock lock(g_->m);
      auto& slot = g_->slots[k];
      if (slot.posted.empty()) slot.posted.assign(all.size(), nullptr);
      slot.posted[static_cast<size_t>(rank_)] = &mine;
      if (++slot.arrived == g_->size) g_->cv.notify_all();
      g_->wait(lock, [&] { return slot.arrived == g_->size; });
      for (size_t r = 0; r < all.size(); ++r) all[r] = static_cast<const Post*>(slot.posted[r]);
    }
    std::vector<char> tmp;
    std::function<void()> write;
    std::exception_ptr error;
    try {
      write = compute(all, tmp);
    } catch (...) {
      error = std::current_exception();
    }
    {
      std::unique_lock lock(g_->m);
      auto& slot = g_->slots[k];
      if (++slot.departed == g_->size) {
        g_->slots.erase(k);
        g_->cv.notify_all();
      } else {
        g_->wait(lock, [&] { return g_->slots.find(k) == g_->slots.end(); });
      }
    }
    if (error) std::rethrow_exception(error);
    write();
    return k;
  }

  std::shared_ptr<SharedGroup> g_;
  int rank_;
  std::string name_;
  uint64_t calls_ = 0;      // worker thread only
  uint64_t k_pending_ = 0;  // the call being computed (split names its groups by it)
};

}  // namespace

void run_in_process(int ranks, const std::function<void(Communicator& world)>& fn,
                    CommOptions options) {
  TRI_CHECK(ranks >= 1, "run_in_process: need at least one rank, got {}", ranks);
  std::vector<int> world(static_cast<size_t>(ranks));
  for (int r = 0; r < ranks; ++r) world[static_cast<size_t>(r)] = r;
  auto shared = std::make_shared<SharedGroup>(world, std::make_shared<std::atomic<bool>>(false));
  std::vector<std::exception_ptr> errors(static_cast<size_t>(ranks));
  std::vector<char> own(static_cast<size_t>(ranks), 0);  // not vector<bool>: written by threads
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] {
      std::unique_ptr<Communicator> comm;
      try {
        comm = std::make_unique<Communicator>(std::make_unique<InProcessBackend>(shared, r, "world"),
                                              "world", options);
        fn(*comm);
      } catch (const WorldAborted&) {
        errors[static_cast<size_t>(r)] = std::current_exception();
      } catch (...) {
        errors[static_cast<size_t>(r)] = std::current_exception();
        own[static_cast<size_t>(r)] = 1;
      }
      if (errors[static_cast<size_t>(r)]) {
        shared->aborted->store(true);  // before the communicator drains: nobody waits for us
        std::lock_guard lock(shared->m);
        shared->cv.notify_all();
      }
      comm.reset();
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < ranks; ++r) {
    if (own[static_cast<size_t>(r)]) std::rethrow_exception(errors[static_cast<size_t>(r)]);
  }
  for (const auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

}  // namespace trident::comm
