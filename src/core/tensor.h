// Tensor: a shape plus fp32 data that is either owned (an accounted FloatBuffer) or a view
// into someone else's storage. Contiguous row-major only; that is all the kernels need.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/memory.h"

namespace trident {

using Shape = std::vector<int64_t>;

int64_t shape_numel(const Shape& shape);
std::string shape_str(const Shape& shape);  // "[768, 2304]"

class Tensor {
 public:
  Tensor() = default;
  // Owned, zero-filled, accounted under `category`.
  static Tensor zeros(MemoryTracker& tracker, MemCategory category, Shape shape);
  // Non-owning view of `data` (which must outlive the view).
  static Tensor view(float* data, Shape shape);

  float* data() { return data_; }
  const float* data() const { return data_; }
  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_.at(static_cast<std::size_t>(i)); }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t numel() const { return shape_numel(shape_); }
  bool defined() const { return data_ != nullptr || numel() == 0; }
  bool owns_storage() const { return storage_ != nullptr; }

  // A view of rows [begin, begin + count) along the first dimension.
  Tensor rows(int64_t begin, int64_t count);
  // Same data, another shape with the same element count.
  Tensor reshaped(Shape shape);

 private:
  float* data_ = nullptr;
  Shape shape_;
  std::shared_ptr<FloatBuffer> storage_;
};

}  // namespace trident
