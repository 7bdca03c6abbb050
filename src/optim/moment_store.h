// Where AdamW's two moments (exp_avg, exp_avg_sq) of one optimizer range live: in memory, or
// offloaded to a file on disk (--offload optimizer) and streamed through in blocks. AdamW's
// math is the same either way: it sees the moments one block at a time through update(), and
// the update is elementwise, so the result is bitwise the same for any block size.
//
// The offloaded store keeps block i's exp_avg and exp_avg_sq (and values) next to each other in
// its file (one read and one write per block and step; a part shrinks to its elements rounded up
// to 4 KiB pages: the last block's, and a values part that holds some elements only) and three
// staging buffers in memory, so that
// the update of block i overlaps the read of block i + 1 and the write of block i - 1. The
// file is scratch: written at start-up, never read back by a later run (checkpoints hold the
// moments), so a crash leaves it useless and the checkpoints untouched; a clean exit deletes it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/memory.h"

namespace trident::optim {

// What --offload moves to disk.
enum class OffloadKind { kNone, kOptimizer, kOptimizerParams };
std::span<const std::string_view> offload_kind_names();  // none, optimizer, optimizer+params

// Where the moments go, as the run configuration says ([parallel] offload, offload_dir,
// offload_block_kib bind to these members).
struct OffloadOptions {
  OffloadKind kind = OffloadKind::kNone;  // --offload
  std::string dir;                        // --offload-dir: one file per rank and model chunk
  int block_kib = 4096;                   // --offload-block-kib: one moment per block (a multiple of 4)
  bool optimizer() const { return kind != OffloadKind::kNone; }  // the moments are on disk
  bool params() const { return kind == OffloadKind::kOptimizerParams; }  // the ZeRO-3 shard too
  int64_t block_bytes() const { return int64_t{block_kib} * 1024; }
};

// Store-index ranges [first, second), ascending and disjoint, whose values a store holds.
using ValueRuns = std::vector<std::pair<int64_t, int64_t>>;

class MomentStore {
 public:
  virtual ~MomentStore() = default;
  int64_t size() const { return n_; }

  // The values the store holds (its "value index" counts them in store order): none; every
  // element's (--offload optimizer+params: ZeRO-3's shard); or those of some elements (ZeRO-1/2's
  // sharded fp32 master of the operand-only parameters under --offload optimizer in bf16/fp16).
  int64_t value_count() const { return values_; }
  // Whether it holds every element's values (--offload optimizer+params).
  bool holds_values() const { return all_values_; }

  // One block of an update: store elements [begin, begin + count), their moments m and v, and
  // the values held among them, w[0, w_count) with value indices [w_first, w_first + w_count)
  // (w null when the store holds none).
  struct Block {
    int64_t begin = 0, count = 0;
    float* m = nullptr;
    float* v = nullptr;
    float* w = nullptr;
    int64_t w_first = 0, w_count = 0;
  };
  // One pass over [0, size()) in blocks, in order, with each block's state in memory; what fn
  // leaves there is the new state.
  using BlockFn = std::function<void(const Block&)>;
  virtual void update(const BlockFn& fn) = 0;

  // Elements [begin, begin + count) of one part (kind 0: exp_avg, 1: exp_avg_sq, 2: values, by
  // value index), for checkpoints and checks: one tensor at a time, never the whole range in memory.
  virtual void read(int kind, int64_t begin, int64_t count, float* out) = 0;
  virtual void write(int kind, int64_t begin, int64_t count, const float* in) = 0;

  // An asynchronous read of [begin, begin + count) of one part into memory the prefetch owns
  // (counted under MemCategory::kParameters while it lives): issued at construction, data()
  // waits for it. ZeRO-3 reads the next layer's shard this way while the current one computes.
  class Prefetch {
   public:
    virtual ~Prefetch() = default;
    virtual const float* data() = 0;
  };
  virtual std::unique_ptr<Prefetch> prefetch(int kind, int64_t begin, int64_t count) = 0;

  // "in memory" or "offloaded to PATH (O_DIRECT io_uring, 8 blocks of 4.00 MiB)".
  virtual std::string describe() const = 0;
  // I/O totals (0 in memory): bytes moved each way, seconds the update waited for the disk.
  struct IoStats {
    double bytes_read = 0, bytes_written = 0, wait_s = 0;
  };
  virtual IoStats io_stats() const { return {}; }

 protected:
  MomentStore(int64_t n, int64_t values, bool all_values) : n_(n), values_(values), all_values_(all_values) {}
  int64_t n_;
  int64_t values_;
  bool all_values_;
};

// Both moments as two FloatBuffers under MemCategory::kOptimizerState (zeros).
std::unique_ptr<MomentStore> make_memory_moment_store(MemoryTracker& tracker, int64_t n);

// The moments (and the values of the elements in `values`) in `path` (created, preallocated and
// locked; zeros), counted under MemCategory::kOffloaded, with the staging buffers under
// kOptimizerState. Throws trident::Error when the file cannot be created, is in use by a live
// run, or does not fit.
std::unique_ptr<MomentStore> make_offloaded_moment_store(MemoryTracker& tracker, int64_t n,
                                                         const std::string& path,
                                                         int64_t block_bytes, const ValueRuns& values = {});

// The store `options` ask for: in memory, or a file under options.dir named after the world
// rank and the model chunk (so the ranks of one run never collide, and another live run on
// the same directory is refused by the file lock). With options.params() the store holds the
// values of all `n` elements (`n` must then be the whole ZeRO-3 shard: no frozen parameters);
// otherwise, offloaded, those of `values` (ZeRO-1/2's master shard; in memory it must be empty).
std::unique_ptr<MomentStore> make_moment_store(MemoryTracker& tracker, int64_t n,
                                               const OffloadOptions& options, int world_rank,
                                               int chunk, const ValueRuns& values = {});

}  // namespace trident::optim
