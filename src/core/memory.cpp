// Memory accounting and the accounted float buffer.
#include "core/memory.h"

#include <fmt/format.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <new>
#include <utility>

#include "core/async_file_io.h"  // detail::allocate_zeroed, free_zeroed (declared for the I/O buffers)
#include "core/check.h"

namespace trident {

const char* mem_category_name(MemCategory c) {
  switch (c) {
    case MemCategory::kParameters: return "parameters";
    case MemCategory::kPackedBase: return "packed_base";
    case MemCategory::kGradients: return "gradients";
    case MemCategory::kOptimizerState: return "optimizer_state";
    case MemCategory::kActivations: return "activations";
    case MemCategory::kWorkspace: return "workspace";
    case MemCategory::kCommBuffers: return "comm_buffers";
    case MemCategory::kCheckpointSnapshot: return "ckpt_snapshot";
    case MemCategory::kOffloaded: return "offloaded";
    case MemCategory::kCount: break;
  }
  return "unknown";
}

void MemoryTracker::add(MemCategory c, std::size_t bytes) {
  const int i = index(c);
  current_[i] += bytes;
  peak_[i] = std::max(peak_[i], current_[i]);
  if (c == MemCategory::kOffloaded) return;  // on disk: not part of the resident total
  current_total_ += bytes;
  peak_total_ = std::max(peak_total_, current_total_);
}

void MemoryTracker::release(MemCategory c, std::size_t bytes) {
  const int i = index(c);
  TRI_CHECK(current_[i] >= bytes, "memory accounting underflow in {}: releasing {} of {} bytes",
            mem_category_name(c), bytes, current_[i]);
  current_[i] -= bytes;
  if (c != MemCategory::kOffloaded) current_total_ -= bytes;
}

void MemoryTracker::reset_peaks() {
  peak_ = current_;
  peak_total_ = current_total_;
}

std::size_t process_peak_rss() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return static_cast<std::size_t>(std::strtoull(line.c_str() + 6, nullptr, 10)) * 1024;
  }
  return 0;
}

std::string format_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024.0 && u < 4) {
    bytes /= 1024.0;
    ++u;
  }
  return u == 0 ? fmt::format("{:.0f} {}", bytes, units[u]) : fmt::format("{:.2f} {}", bytes, units[u]);
}

std::string MemoryTracker::report() const {
  std::string out;
  for (int i = 0; i < kN; ++i) {
    if (static_cast<MemCategory>(i) == MemCategory::kOffloaded) continue;  // after the total
    out += fmt::format("  {:<16} current {:>11}  peak {:>11}\n",
                       mem_category_name(static_cast<MemCategory>(i)),
                       format_bytes(static_cast<double>(current_[i])),
                       format_bytes(static_cast<double>(peak_[i])));
  }
  out += fmt::format("  {:<16} current {:>11}  peak {:>11}\n", "total resident",
                     format_bytes(static_cast<double>(current_total_)),
                     format_bytes(static_cast<double>(peak_total_)));
  const int off = index(MemCategory::kOffloaded);
  if (peak_[off] > 0) {
    out += fmt::format("  {:<16} current {:>11}  peak {:>11}  (on disk, --offload)\n", "offloaded",
                       format_bytes(static_cast<double>(current_[off])),
                       format_bytes(static_cast<double>(peak_[off])));
  }
  return out;
}

namespace detail {

// Large buffers come straight from the kernel (mmap, zero pages, page aligned) and go straight
// back (munmap). Through malloc they would not: glibc raises its mmap threshold to the size of
// every large block freed (up to 32 MiB), after which blocks that size come from its heap, whose
// freed pages stay resident; ZeRO-3's gathered groups and shard slices, allocated and freed at
// every layer, then left the kernel's peak RSS 1.3x the tracked step peak on a 51M-parameter
// model (tests/cli/offload_startup_test.py). Mapped, a freed buffer leaves the RSS at once, and
// the RSS follows what the tracker counts.
constexpr std::size_t kMapBytes = std::size_t{1} << 20;

std::size_t mapped_length(std::size_t bytes) {
  if (bytes < kMapBytes) return 0;
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  return (bytes + page - 1) / page * page;
}

void* allocate_zeroed(std::size_t bytes, std::size_t alignment) {
  if (const std::size_t len = mapped_length(bytes); len > 0) {
    void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? nullptr : p;
  }
  void* p = std::aligned_alloc(alignment, bytes);
  if (p) std::memset(p, 0, bytes);
  return p;
}

void free_zeroed(void* p, std::size_t bytes) {
  if (!p) return;
  if (const std::size_t len = mapped_length(bytes); len > 0) {
    ::munmap(p, len);
  } else {
    std::free(p);
  }
}

}  // namespace detail

namespace {
std::size_t float_bytes(std::size_t count) { return ((count * sizeof(float) + 63) / 64) * 64; }
}  // namespace

FloatBuffer::FloatBuffer(MemoryTracker& tracker, MemCategory category, std::size_t count)
    : count_(count), tracker_(&tracker), category_(category) {
  if (count == 0) return;
  const std::size_t bytes = float_bytes(count);
  data_ = static_cast<float*>(detail::allocate_zeroed(bytes, 64));
  if (!data_) {
    TRI_FAIL("out of memory allocating {} for {}", format_bytes(static_cast<double>(bytes)),
             mem_category_name(category));
  }
  tracked_ = count_ * sizeof(float);
  tracker_->add(category_, tracked_);
}

FloatBuffer::FloatBuffer(MemoryTracker& tracker, MemCategory category, std::size_t count,
                         const std::vector<std::pair<int64_t, int64_t>>& backed)
    : count_(count), backed_(backed), tracker_(&tracker), category_(category) {
  if (count == 0) return;
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  sparse_map_ = (count * sizeof(float) + page - 1) / page * page;
  void* p = ::mmap(nullptr, sparse_map_, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    sparse_map_ = 0;
    TRI_FAIL("out of address space reserving {} for {}", format_bytes(static_cast<double>(count * sizeof(float))),
             mem_category_name(category));
  }
  data_ = static_cast<float*>(p);
  int64_t prev = 0;
  for (const auto& [lo, hi] : backed_) {
    TRI_CHECK(prev <= lo && lo <= hi && hi <= static_cast<int64_t>(count),
              "sparse buffer range [{}, {}) not ascending inside the {} elements", lo, hi, count);
    prev = hi;
    if (hi == lo) continue;
    const std::size_t a = static_cast<std::size_t>(lo) * sizeof(float) / page * page;
    const std::size_t b = (static_cast<std::size_t>(hi) * sizeof(float) + page - 1) / page * page;
    TRI_CHECK(::mprotect(static_cast<char*>(p) + a, b - a, PROT_READ | PROT_WRITE) == 0,
              "mprotect of a sparse {} buffer failed", mem_category_name(category));
    tracked_ += static_cast<std::size_t>(hi - lo) * sizeof(float);
  }
  tracker_->add(category_, tracked_);
}

FloatBuffer::FloatBuffer(FloatBuffer&& other) noexcept { *this = std::move(other); }

FloatBuffer& FloatBuffer::operator=(FloatBuffer&& other) noexcept {
  if (this != &other) {
    reset();
    data_ = std::exchange(other.data_, nullptr);
    count_ = std::exchange(other.count_, 0);
    tracked_ = std::exchange(other.tracked_, 0);
    sparse_map_ = std::exchange(other.sparse_map_, 0);
    backed_ = std::exchange(other.backed_, {});
    tracker_ = std::exchange(other.tracker_, nullptr);
    category_ = other.category_;
  }
  return *this;
}

FloatBuffer::~FloatBuffer() { reset(); }

void FloatBuffer::zero() {
  if (!data_) return;
  if (sparse_map_ == 0) return static_cast<void>(std::memset(data_, 0, count_ * sizeof(float)));
  for (const auto& [lo, hi] : backed_) std::fill(data_ + lo, data_ + hi, 0.0f);
}

void FloatBuffer::reset() {
  if (data_) {
    if (sparse_map_ > 0) {
      ::munmap(data_, sparse_map_);
    } else {
      detail::free_zeroed(data_, float_bytes(count_));
    }
    if (tracker_) tracker_->release(category_, tracked_);
  }
  data_ = nullptr;
  count_ = 0;
  tracked_ = 0;
  sparse_map_ = 0;
  backed_.clear();
}

}  // namespace trident
