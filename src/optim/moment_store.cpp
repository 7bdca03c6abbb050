// The in-memory and the offloaded moment stores (see moment_store.h).
#include "optim/moment_store.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <optional>
#include <vector>

#include "core/async_file_io.h"
#include "core/check.h"

namespace trident::optim {
namespace {

class MemoryMomentStore final : public MomentStore {
 public:
  MemoryMomentStore(MemoryTracker& tracker, int64_t n)
      : MomentStore(n, 0, false), tracker_(tracker),
        m_(tracker, MemCategory::kOptimizerState, static_cast<std::size_t>(n)),
        v_(tracker, MemCategory::kOptimizerState, static_cast<std::size_t>(n)) {}

  void update(const BlockFn& fn) override {
    if (n_ == 0) return;
    Block b;
    b.count = n_;
    b.m = m_.data();
    b.v = v_.data();
    fn(b);
  }
  void read(int kind, int64_t begin, int64_t count, float* out) override {
    check(begin, count);
    std::copy_n(buf(kind) + begin, count, out);
  }
  void write(int kind, int64_t begin, int64_t count, const float* in) override {
    check(begin, count);
    std::copy_n(in, count, buf(kind) + begin);
  }
  std::string describe() const override { return "in memory"; }

  // A copy (the memory store has nothing to wait for).
  class Copy final : public Prefetch {
   public:
    Copy(MemoryTracker& tracker, const float* from, int64_t count)
        : buf_(tracker, MemCategory::kParameters, static_cast<std::size_t>(count)) {
      std::copy_n(from, count, buf_.data());
    }
    const float* data() override { return buf_.data(); }

   private:
    FloatBuffer buf_;
  };
  std::unique_ptr<Prefetch> prefetch(int kind, int64_t begin, int64_t count) override {
    check(begin, count);
    return std::make_unique<Copy>(tracker_, buf(kind) + begin, count);
  }

 private:
  float* buf(int kind) {
    TRI_CHECK(kind == 0 || kind == 1, "the in-memory moment store holds no values (kind {})", kind);
    return kind == 0 ? m_.data() : v_.data();
  }
  void check(int64_t begin, int64_t count) const {
    TRI_CHECK(begin >= 0 && count >= 0 && begin + count <= n_, "moments [{}, {}) outside the {} held",
              begin, begin + count, n_);
  }
  MemoryTracker& tracker_;
  FloatBuffer m_, v_;
};

// The values held per block: vfirst[blk] is the value index of block blk's first held value
// (blocks + 1 entries, the last the count), from `runs` in store indices.
std::vector<int64_t> value_firsts(const ValueRuns& runs, int64_t n, int64_t block_elems, int64_t blocks) {
  std::vector<int64_t> first(static_cast<std::size_t>(blocks) + 1, 0);
  int64_t prev = 0;
  for (const auto& [lo, hi] : runs) {
    TRI_CHECK(lo >= prev && lo <= hi && hi <= n, "offload value run [{}, {}) is outside the {} elements or not "
              "after the previous one (ending at {})", lo, hi, n, prev);
    prev = hi;
    for (int64_t at = lo; at < hi;) {  // the run's part in each block it meets
      const int64_t blk = at / block_elems, end = std::min(hi, (blk + 1) * block_elems);
      first[static_cast<std::size_t>(blk) + 1] += end - at;
      at = end;
    }
  }
  for (std::size_t k = 1; k < first.size(); ++k) first[k] += first[k - 1];
  return first;
}

class OffloadedMomentStore final : public MomentStore {
 public:
  OffloadedMomentStore(MemoryTracker& tracker, int64_t n, const std::string& path, int64_t block_bytes,
                       const ValueRuns& values)
      : MomentStore(n, 0, false), tracker_(tracker), block_bytes_(static_cast<std::size_t>(block_bytes)),
        block_elems_(block_bytes / static_cast<int64_t>(sizeof(float))),
        blocks_(block_elems_ > 0 ? (n + block_elems_ - 1) / block_elems_ : 0) {
    TRI_CHECK(block_bytes > 0 && block_bytes % static_cast<int64_t>(AsyncFile::kAlignment) == 0,
              "offload block size {} bytes is not a positive multiple of {} (direct I/O's alignment)",
              block_bytes, AsyncFile::kAlignment);
    vfirst_ = value_firsts(values, n, block_elems_, blocks_);
    values_ = vfirst_.back();
    all_values_ = values_ == n && !values.empty();
    parts_ = values.empty() ? 2 : 3;
    offset_.assign(static_cast<std::size_t>(blocks_) + 1, 0);
    for (int64_t blk = 0; blk < blocks_; ++blk) {
      std::size_t bytes = 0;
      for (int kind = 0; kind < static_cast<int>(parts_); ++kind) bytes += part_bytes(kind, blk);
      offset_[static_cast<std::size_t>(blk) + 1] = offset_[static_cast<std::size_t>(blk)] + bytes;
    }
    file_.emplace(path, offset_.back(),
                  all_values_ ? "the optimizer+params offload file"
                  : values_ > 0 ? "the optimizer and fp32 master offload file" : "the optimizer offload file");
    for (AlignedBytes& b : staging_) b = aligned_bytes(parts_ * block_bytes_);
    resident_ = staging_.size() * parts_ * block_bytes_;
    offloaded_ = static_cast<std::size_t>(2 * n + values_) * sizeof(float);
    tracker_.add(MemCategory::kOptimizerState, resident_);
    tracker_.add(MemCategory::kOffloaded, offloaded_);
  }

  ~OffloadedMomentStore() override {
    tracker_.release(MemCategory::kOptimizerState, resident_);
    tracker_.release(MemCategory::kOffloaded, offloaded_);
    // Unlinked while still locked, so a run that takes the name next cannot lose its file.
    const std::string path = file_->path();
    file_.reset();
    ::unlink(path.c_str());
  }

  void update(const BlockFn& fn) override {
    if (blocks_ == 0) return;
    constexpr int64_t kSlots = 3;  // block i updates while i + 1 reads and i - 1 writes
    std::array<std::optional<AsyncFile::Ticket>, kSlots> reading, writing;
    auto slot = [&](int64_t i) { return static_cast<std::size_t>(i % kSlots); };
    reading[0] = file_->submit_read(staging_[0].get(), block_total(0), block_offset(0));
    for (int64_t i = 0; i < blocks_; ++i) {
      const std::size_t s = slot(i);
      file_->wait(*reading[s]);
      reading[s].reset();
      if (i + 1 < blocks_) {
        const std::size_t next = slot(i + 1);
        if (writing[next]) {  // block i - 2's write still owns that buffer
          file_->wait(*writing[next]);
          writing[next].reset();
        }
        reading[next] = file_->submit_read(staging_[next].get(), block_total(i + 1), block_offset(i + 1));
      }
      std::byte* base = staging_[s].get();
      Block b;
      b.begin = i * block_elems_;
      b.count = part_count(0, i);
      b.m = reinterpret_cast<float*>(base);
      b.v = reinterpret_cast<float*>(base + part_bytes(0, i));
      if (parts_ == 3) {
        b.w = reinterpret_cast<float*>(base + part_bytes(0, i) + part_bytes(1, i));
        b.w_first = part_first(2, i);
        b.w_count = part_count(2, i);
      }
      fn(b);
      writing[s] = file_->submit_write(staging_[s].get(), block_total(i), block_offset(i));
    }
    for (auto& w : writing) {
      if (w) file_->wait(*w);
    }
  }

  void read(int kind, int64_t begin, int64_t count, float* out) override {
    check_kind(kind);
    for_each_piece(kind, begin, count, [&](int64_t blk, int64_t lo, int64_t len, int64_t done) {
      load_part(blk, kind);
      std::copy_n(part() + lo, len, out + done);
    });
  }

  void write(int kind, int64_t begin, int64_t count, const float* in) override {
    check_kind(kind);
    for_each_piece(kind, begin, count, [&](int64_t blk, int64_t lo, int64_t len, int64_t done) {
      if (len < part_count(kind, blk)) load_part(blk, kind);  // keep the rest of the part
      std::copy_n(in + done, len, part() + lo);
      file_->wait(file_->submit_write(staging_[0].get(), part_bytes(kind, blk), part_offset(kind, blk)));
    });
  }

  std::string describe() const override {
    return fmt::format("offloaded to {} ({} io_uring, {} block(s) of {} x {})", file_->path(),
                       file_->direct() ? "O_DIRECT" : "buffered (the file system refuses O_DIRECT)",
                       blocks_, parts_, format_bytes(static_cast<double>(block_bytes_)));
  }

  // The pieces of [begin, begin + count) of one part, block by block, each widened to whole
  // pages, read into one aligned buffer. Only the first piece can start inside a page (every
  // later one starts at its block's part and the one before ends at its part's end, whole pages
  // before the last block: moments, or every element's values), so the elements are contiguous
  // in the buffer after the first piece's slack.
  class FilePrefetch final : public Prefetch {
   public:
    FilePrefetch(OffloadedMomentStore& s, int kind, int64_t begin, int64_t count) : s_(s) {
      s.check_kind(kind);
      TRI_CHECK(kind < 2 || s.all_values_, "prefetch of values needs a store holding every element's values");
      TRI_CHECK(begin >= 0 && count >= 0 && begin + count <= s.n_, "values [{}, {}) outside the {} held",
                begin, begin + count, s.n_);
      if (count == 0) return;
      constexpr std::size_t kA = AsyncFile::kAlignment;
      const int64_t first = begin / s.block_elems_, last = (begin + count - 1) / s.block_elems_;
      struct Piece { std::size_t at, bytes; };
      std::vector<Piece> pieces;
      for (int64_t blk = first; blk <= last; ++blk) {
        const int64_t base = blk * s.block_elems_;
        const std::size_t lo = blk == first ? static_cast<std::size_t>(begin - base) * sizeof(float) : 0;
        const std::size_t hi = blk == last ? static_cast<std::size_t>(begin + count - base) * sizeof(float)
                                           : s.part_bytes(kind, blk);
        const std::size_t a = lo / kA * kA, b = (hi + kA - 1) / kA * kA;
        if (blk == first) skip_ = lo - a;
        pieces.push_back({s.part_offset(kind, blk) + a, b - a});
        bytes_ += b - a;
      }
      buf_ = aligned_bytes(bytes_);
      s.tracker_.add(MemCategory::kParameters, bytes_);
      std::size_t at = 0;
      for (const Piece& p : pieces) {
        tickets_.push_back(s.file_->submit_read(buf_.get() + at, p.bytes, p.at));
        at += p.bytes;
      }
    }
    ~FilePrefetch() override {
      try {
        wait();
      } catch (...) {  // an I/O error nobody asked for: the buffer is freed either way
      }
      if (bytes_ > 0) s_.tracker_.release(MemCategory::kParameters, bytes_);
    }
    const float* data() override {
      wait();
      return reinterpret_cast<const float*>(buf_.get() + skip_);
    }

   private:
    void wait() {
      while (!tickets_.empty()) {
        const AsyncFile::Ticket t = tickets_.back();
        tickets_.pop_back();
        s_.file_->wait(t);
      }
    }
    OffloadedMomentStore& s_;
    AlignedBytes buf_;
    std::size_t bytes_ = 0, skip_ = 0;
    std::vector<AsyncFile::Ticket> tickets_;
  };
  std::unique_ptr<Prefetch> prefetch(int kind, int64_t begin, int64_t count) override {
    return std::make_unique<FilePrefetch>(*this, kind, begin, count);
  }

  IoStats io_stats() const override {
    return {file_->bytes_read(), file_->bytes_written(), file_->wait_seconds()};
  }

 private:
  void check_kind(int kind) const {
    TRI_CHECK(kind >= 0 && kind < static_cast<int>(parts_), "part {} of an offload file that holds {} (0: exp_avg, "
              "1: exp_avg_sq, 2: values, with --offload optimizer+params or an offloaded fp32 master)", kind, parts_);
  }
  // Part `kind` of block `blk`: its first element (a store index; values: a value index), its
  // elements, and its bytes in the file, the elements rounded up to whole pages (so a full
  // moment part is the block size, and a small store or a sparse values part takes no more disk
  // than its pages).
  int64_t part_first(int kind, int64_t blk) const {
    return kind < 2 ? blk * block_elems_ : vfirst_[static_cast<std::size_t>(blk)];
  }
  int64_t part_count(int kind, int64_t blk) const {
    return kind < 2 ? std::min(block_elems_, n_ - blk * block_elems_)
                    : vfirst_[static_cast<std::size_t>(blk) + 1] - vfirst_[static_cast<std::size_t>(blk)];
  }
  std::size_t part_bytes(int kind, int64_t blk) const {
    const auto bytes = static_cast<std::size_t>(part_count(kind, blk)) * sizeof(float);
    return (bytes + AsyncFile::kAlignment - 1) / AsyncFile::kAlignment * AsyncFile::kAlignment;
  }
  std::size_t block_offset(int64_t blk) const { return offset_[static_cast<std::size_t>(blk)]; }
  std::size_t block_total(int64_t blk) const { return block_offset(blk + 1) - block_offset(blk); }
  std::size_t part_offset(int kind, int64_t blk) const {
    std::size_t at = block_offset(blk);
    for (int k = 0; k < kind; ++k) at += part_bytes(k, blk);
    return at;
  }
  // The block whose part `kind` holds element `at` (values: the last block starting at or before
  // it, which skips the empty parts before it).
  int64_t block_of(int kind, int64_t at) const {
    if (kind < 2) return at / block_elems_;
    return static_cast<int64_t>(std::upper_bound(vfirst_.begin(), vfirst_.end() - 1, at) - vfirst_.begin()) - 1;
  }
  float* part() { return reinterpret_cast<float*>(staging_[0].get()); }
  // One part of block `blk` into staging buffer 0 (random access; no update runs).
  void load_part(int64_t blk, int kind) {
    file_->wait(file_->submit_read(staging_[0].get(), part_bytes(kind, blk), part_offset(kind, blk)));
  }
  // fn(block, first element within its part, length, elements done before) over [begin, begin +
  // count) of part `kind`.
  template <class F>
  void for_each_piece(int kind, int64_t begin, int64_t count, F&& fn) {
    const int64_t held = kind < 2 ? n_ : values_;
    TRI_CHECK(begin >= 0 && count >= 0 && begin + count <= held, "{} [{}, {}) outside the {} held",
              kind < 2 ? "moments" : "values", begin, begin + count, held);
    int64_t done = 0;
    while (done < count) {
      const int64_t at = begin + done, blk = block_of(kind, at), lo = at - part_first(kind, blk);
      const int64_t len = std::min(count - done, part_count(kind, blk) - lo);
      fn(blk, lo, len, done);
      done += len;
    }
  }

  MemoryTracker& tracker_;
  std::size_t parts_ = 2;  // 2: the moments; 3: and the values
  std::size_t block_bytes_;
  int64_t block_elems_, blocks_;
  std::vector<int64_t> vfirst_;     // per block, the value index of its first value (+ the count)
  std::vector<std::size_t> offset_;  // per block, its byte offset in the file (+ the file's size)
  std::optional<AsyncFile> file_;
  std::array<AlignedBytes, 3> staging_;
  std::size_t resident_ = 0, offloaded_ = 0;
};

}  // namespace

std::unique_ptr<MomentStore> make_memory_moment_store(MemoryTracker& tracker, int64_t n) {
  return std::make_unique<MemoryMomentStore>(tracker, n);
}

std::unique_ptr<MomentStore> make_offloaded_moment_store(MemoryTracker& tracker, int64_t n,
                                                         const std::string& path,
                                                         int64_t block_bytes, const ValueRuns& values) {
  return std::make_unique<OffloadedMomentStore>(tracker, n, path, block_bytes, values);
}

std::span<const std::string_view> offload_kind_names() {
  static constexpr std::string_view kNames[] = {"none", "optimizer", "optimizer+params"};
  return kNames;
}

std::unique_ptr<MomentStore> make_moment_store(MemoryTracker& tracker, int64_t n,
                                               const OffloadOptions& options, int world_rank,
                                               int chunk, const ValueRuns& values) {
  if (!options.optimizer()) {
    TRI_CHECK(values.empty(), "an in-memory moment store holds no values ({} runs asked for)", values.size());
    return make_memory_moment_store(tracker, n);
  }
  TRI_CHECK(!options.dir.empty(), "--offload {} needs --offload-dir DIR (a directory on a local disk with "
            "room for {} bytes per parameter)", offload_kind_names()[static_cast<std::size_t>(options.kind)],
            options.params() || !values.empty() ? 12 : 8);
  const bool held = options.params() || !values.empty();
  const std::string path = fmt::format("{}/trident-offload-rank{:05d}-chunk{}.{}", options.dir, world_rank, chunk,
                                       held ? "state" : "moments");
  return make_offloaded_moment_store(tracker, n, path, options.block_bytes(),
                                     options.params() ? ValueRuns{{0, n}} : values);
}

}  // namespace trident::optim
