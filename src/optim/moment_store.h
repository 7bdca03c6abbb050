// Where AdamW's two moments (exp_avg, exp_avg_sq) of one optimizer range live: in memory, or
// offloaded to a file on disk (--offload optimizer) and streamed through in blocks. AdamW's
// math is the same either way: it sees the moments one block at a time through update(), and
// the update is elementwise, so the result is bitwise the same for any block size.
//
// The offloaded store keeps block i's exp_avg and exp_avg_sq (and values) next to each other in
// its file (one read and one write per block and step; the last block's parts shrink to its elements
// rounded up to 4 KiB pages) and three staging buffers in memory, so that
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

class MomentStore {
 public:
  virtual ~MomentStore() = default;
  int64_t size() const { return n_; }

  // Whether the store also holds the values (kind 2; --offload optimizer+params).
  bool holds_values() const { return values_; }

  // One pass over [0, size()) in blocks, in order: fn(begin, count, exp_avg, exp_avg_sq, values)
  // with the block's state in memory (values null unless holds_values()); what fn leaves there
  // is the new state.
  using BlockFn = std::function<void(int64_t begin, int64_t count, float* m, float* v, float* w)>;
  virtual void update(const BlockFn& fn) = 0;

  // Elements [begin, begin + count) of one part (kind 0: exp_avg, 1: exp_avg_sq, 2: values),
  // for checkpoints and checks: one tensor at a time, never the whole range in memory.
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
  MomentStore(int64_t n, bool values) : n_(n), values_(values) {}
  int64_t n_;
  bool values_;
};

// Both moments as two FloatBuffers under MemCategory::kOptimizerState (zeros).
std::unique_ptr<MomentStore> make_memory_moment_store(MemoryTracker& tracker, int64_t n);

// The moments (and, with `values`, the values) in `path` (created, preallocated and locked;
// zeros), counted under MemCategory::kOffloaded, with the staging buffers under kOptimizerState.
// Throws trident::Error when the file cannot be created, is in use by a live run, or does not fit.
std::unique_ptr<MomentStore> make_offloaded_moment_store(MemoryTracker& tracker, int64_t n,
                                                         const std::string& path,
                                                         int64_t block_bytes, bool values = false);

// The store `options` ask for: in memory, or a file under options.dir named after the world
// rank and the model chunk (so the ranks of one run never collide, and another live run on
// the same directory is refused by the file lock). With options.params() the store holds the
// values too (`n` must then be the whole ZeRO-3 shard: no frozen parameters).
std::unique_ptr<MomentStore> make_moment_store(MemoryTracker& tracker, int64_t n,
                                               const OffloadOptions& options, int world_rank,
                                               int chunk);

}  // namespace trident::optim
