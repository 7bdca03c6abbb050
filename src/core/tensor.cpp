// Tensor construction and views.
#include "core/tensor.h"

#include <fmt/format.h>

#include "core/check.h"

namespace trident {

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_str(const Shape& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

Tensor Tensor::zeros(MemoryTracker& tracker, MemCategory category, Shape shape) {
  for (int64_t d : shape) TRI_CHECK(d >= 0, "negative dimension in shape {}", shape_str(shape));
  Tensor t;
  t.storage_ = std::make_shared<FloatBuffer>(tracker, category,
                                             static_cast<std::size_t>(shape_numel(shape)));
  t.data_ = t.storage_->data();
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::view(float* data, Shape shape) {
  Tensor t;
  t.data_ = data;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::rows(int64_t begin, int64_t count) {
  TRI_CHECK(ndim() >= 1 && begin >= 0 && begin + count <= dim(0),
            "rows [{}, {}) out of range for shape {}", begin, begin + count, shape_str(shape_));
  Shape s = shape_;
  s[0] = count;
  const int64_t row = dim(0) == 0 ? 0 : numel() / dim(0);
  Tensor t = *this;
  t.data_ = data_ + begin * row;
  t.shape_ = std::move(s);
  return t;
}

Tensor Tensor::reshaped(Shape shape) {
  TRI_CHECK(shape_numel(shape) == numel(), "cannot reshape {} to {}", shape_str(shape_),
            shape_str(shape));
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

}  // namespace trident
