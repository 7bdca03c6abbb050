// Memory accounting by category (parameters, gradients, optimizer state, activations,
// workspace, communication buffers, the asynchronous checkpoint's snapshot) with current and
// peak bytes; one more category, offloaded, counts the state kept on disk (--offload), which
// the resident totals leave out, plus an RAII float buffer that reports itself to a tracker. The tracker is
// passed in, never global.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace trident {

enum class MemCategory : int {
  kParameters = 0,
  kPackedBase,          // QLoRA: the frozen base's quantized matrices, packed (quant/packed_base.h)
  kGradients,
  kOptimizerState,
  kActivations,
  kWorkspace,
  kCommBuffers,
  kCheckpointSnapshot,  // --async-ckpt: rank 0's host copy of the checkpoint being written
  kOffloaded,           // --offload: state held in files on disk, not in memory (never in the totals)
  kCount
};

const char* mem_category_name(MemCategory c);  // "parameters", "gradients", ...

class MemoryTracker {
 public:
  void add(MemCategory c, std::size_t bytes);
  void release(MemCategory c, std::size_t bytes);

  std::size_t current(MemCategory c) const { return current_[index(c)]; }
  std::size_t peak(MemCategory c) const { return peak_[index(c)]; }
  // Resident bytes: every category but kOffloaded.
  std::size_t current_total() const { return current_total_; }
  std::size_t peak_total() const { return peak_total_; }
  // Forget the peaks (e.g. after start-up) so the next step's peaks are measured alone.
  void reset_peaks();

  // One line per category: "parameters  current 12.3 MiB  peak 12.3 MiB".
  std::string report() const;

 private:
  static int index(MemCategory c) { return static_cast<int>(c); }
  static constexpr int kN = static_cast<int>(MemCategory::kCount);
  std::array<std::size_t, kN> current_{};
  std::array<std::size_t, kN> peak_{};
  std::size_t current_total_ = 0;
  std::size_t peak_total_ = 0;
};

// Human-readable byte count: "512 B", "1.50 KiB", "12.3 MiB", "1.20 GiB".
std::string format_bytes(double bytes);

// A 64-byte aligned, zero-initialised array of floats accounted under one category.
// Move-only; releases its bytes from the tracker when destroyed.
// The kernel's peak resident set of this process so far (VmHWM in /proc/self/status), in bytes:
// what the machine had to hold, start-up included, beside the tracker's per-category peaks,
// which see only what the engine allocates. 0 where the kernel does not say (not Linux).
std::size_t process_peak_rss();

class FloatBuffer {
 public:
  FloatBuffer() = default;
  FloatBuffer(MemoryTracker& tracker, MemCategory category, std::size_t count);
  // Only the element ranges `backed` ([first, second), ascending, disjoint, inside [0, count))
  // are memory, zero-initialised; the rest of [0, count) is address space mapped without
  // access, so a pointer there is only a key (ZeRO-1/2's sharded master keeps the operand-only
  // parameters' fp32 values elsewhere and their flat addresses as the keys of their 16-bit
  // copy: parallel/zero_master.h) and reading it faults at once instead of reading stale
  // values. Always mapped from the kernel, whatever the size, the backed ranges' pages made
  // readable and writable (so a few KiB around each range are too). Counted: the backed
  // elements' bytes, exactly.
  FloatBuffer(MemoryTracker& tracker, MemCategory category, std::size_t count,
              const std::vector<std::pair<int64_t, int64_t>>& backed);
  FloatBuffer(FloatBuffer&& other) noexcept;
  FloatBuffer& operator=(FloatBuffer&& other) noexcept;
  FloatBuffer(const FloatBuffer&) = delete;
  FloatBuffer& operator=(const FloatBuffer&) = delete;
  ~FloatBuffer();

  float* data() { return data_; }
  const float* data() const { return data_; }
  std::size_t size() const { return count_; }
  bool empty() const { return count_ == 0; }
  MemoryTracker* tracker() const { return tracker_; }
  // Bytes counted in the tracker (count * 4, or a sparse buffer's backed elements').
  std::size_t tracked_bytes() const { return tracked_; }
  // The sparse constructor's ranges (empty: every element is memory).
  const std::vector<std::pair<int64_t, int64_t>>& backed() const { return backed_; }
  float& operator[](std::size_t i) { return data_[i]; }
  const float& operator[](std::size_t i) const { return data_[i]; }
  void zero();    // the backed elements only, when sparse
  void reset();  // free now

 private:
  float* data_ = nullptr;
  std::size_t count_ = 0;
  std::size_t tracked_ = 0;
  std::size_t sparse_map_ = 0;  // sparse: the mapping's length in bytes (0: allocate_zeroed's)
  std::vector<std::pair<int64_t, int64_t>> backed_;
  MemoryTracker* tracker_ = nullptr;
  MemCategory category_ = MemCategory::kWorkspace;
};

}  // namespace trident
