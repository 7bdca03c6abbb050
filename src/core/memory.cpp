// Memory accounting and the accounted float buffer.
#include "core/memory.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

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

FloatBuffer::FloatBuffer(MemoryTracker& tracker, MemCategory category, std::size_t count)
    : count_(count), tracker_(&tracker), category_(category) {
  if (count == 0) return;
  const std::size_t bytes = ((count * sizeof(float) + 63) / 64) * 64;
  data_ = static_cast<float*>(std::aligned_alloc(64, bytes));
  if (!data_) {
    TRI_FAIL("out of memory allocating {} for {}", format_bytes(static_cast<double>(bytes)),
             mem_category_name(category));
  }
  std::memset(data_, 0, bytes);
  tracker_->add(category_, count_ * sizeof(float));
}

FloatBuffer::FloatBuffer(FloatBuffer&& other) noexcept { *this = std::move(other); }

FloatBuffer& FloatBuffer::operator=(FloatBuffer&& other) noexcept {
  if (this != &other) {
    reset();
    data_ = std::exchange(other.data_, nullptr);
    count_ = std::exchange(other.count_, 0);
    tracker_ = std::exchange(other.tracker_, nullptr);
    category_ = other.category_;
  }
  return *this;
}

FloatBuffer::~FloatBuffer() { reset(); }

void FloatBuffer::zero() {
  if (data_) std::memset(data_, 0, count_ * sizeof(float));
}

void FloatBuffer::reset() {
  if (data_) {
    std::free(data_);
    if (tracker_) tracker_->release(category_, count_ * sizeof(float));
  }
  data_ = nullptr;
  count_ = 0;
}

}  // namespace trident
