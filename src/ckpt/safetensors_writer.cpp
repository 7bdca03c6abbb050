// safetensors: the streaming writer (the reader and the dtype table: safetensors.cpp).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <nlohmann/json.hpp>

#include "ckpt/atomic_file.h"
#include "ckpt/safetensors.h"
#include "core/check.h"

namespace trident::ckpt {

namespace {
std::string shape_json(const Shape& shape) {
  return fmt::format("[{}]", fmt::join(shape, ","));
}
}  // namespace

void SafetensorsWriter::add_tensor(const std::string& name, const Shape& shape, const float* data) {
  const std::int64_t n = shape_numel(shape);
  TRI_CHECK(data != nullptr || n == 0, "tensor '{}' has no data", name);
  add_tensor(name, shape, [data, n](TensorSink& sink) { sink.write(data, n); });
}

void SafetensorsWriter::add_tensor(const std::string& name, const Shape& shape,
                                   TensorProvider provider) {
  TRI_CHECK(!name.empty() && name != "__metadata__", "invalid safetensors tensor name '{}'", name);
  TRI_CHECK(!contains(name), "tensor '{}' was added twice to one safetensors file", name);
  for (const auto d : shape) TRI_CHECK(d >= 0, "tensor '{}' has a negative dimension {}", name, shape_str(shape));
  TRI_CHECK(static_cast<bool>(provider), "tensor '{}' has no data provider", name);
  entries_.push_back({name, shape, std::move(provider), DType::kF32, nullptr});
}

void SafetensorsWriter::add_raw_tensor(const std::string& name, DType dtype, const Shape& shape,
                                       std::vector<std::byte> bytes) {
  const auto expected = static_cast<std::uint64_t>(shape_numel(shape)) * dtype_size(dtype);
  TRI_CHECK(bytes.size() == expected, "tensor '{}' {} of {} needs {} bytes, got {}", name, shape_str(shape),
            dtype_name(dtype), expected, bytes.size());
  add_tensor(name, shape, [](TensorSink&) {});
  entries_.back().dtype = dtype;
  entries_.back().raw = std::make_shared<const std::vector<std::byte>>(std::move(bytes));
}

std::uint64_t SafetensorsWriter::Entry::bytes() const {
  return static_cast<std::uint64_t>(shape_numel(shape)) * dtype_size(dtype);
}

bool SafetensorsWriter::contains(const std::string& name) const {
  return std::any_of(entries_.begin(), entries_.end(), [&](const Entry& e) { return e.name == name; });
}

std::vector<std::pair<std::string, Shape>> SafetensorsWriter::layout() const {
  std::vector<std::pair<std::string, Shape>> out;
  for (const auto& e : entries_) out.emplace_back(e.name, e.shape);
  return out;
}

std::string SafetensorsWriter::header_bytes() const {
  std::string json = "{";
  if (!metadata_.empty()) {
    json += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata_) {
      json += fmt::format("{}{}:{}", first ? "" : ",", nlohmann::json(k).dump(), nlohmann::json(v).dump());
      first = false;
    }
    json += "}";
  }
  std::uint64_t offset = 0;
  for (std::size_t i = 0; i < entries_.size(); ++i) {
    const auto& e = entries_[i];
    const std::uint64_t bytes = e.bytes();
    if (i > 0 || !metadata_.empty()) json += ",";
    json += fmt::format("{}:{{\"dtype\":\"{}\",\"shape\":{},\"data_offsets\":[{},{}]}}",
                        nlohmann::json(e.name).dump(), dtype_name(e.dtype), shape_json(e.shape), offset,
                        offset + bytes);
    offset += bytes;
  }
  json += "}";
  while (json.size() % 8 != 0) json += ' ';
  std::string out(8, '\0');
  const std::uint64_t n = json.size();
  std::memcpy(out.data(), &n, 8);
  return out + json;
}

std::vector<std::uint64_t> SafetensorsWriter::file_offsets() const {
  std::uint64_t offset = header_bytes().size();
  std::vector<std::uint64_t> out;
  for (const auto& e : entries_) {
    out.push_back(offset);
    offset += e.bytes();
  }
  return out;
}

std::uint64_t SafetensorsWriter::file_size() const {
  std::uint64_t size = header_bytes().size();
  for (const auto& e : entries_) size += e.bytes();
  return size;
}

namespace {
class CountingSink final : public TensorSink {
 public:
  CountingSink(AtomicFile& file, const std::string& name, std::int64_t expected)
      : file_(file), name_(name), expected_(expected) {}
  void write(const float* data, std::int64_t count) override {
    TRI_CHECK(count >= 0 && written_ + count <= expected_,
              "the provider of tensor '{}' wrote more than its {} elements while writing '{}'",
              name_, expected_, file_.final_path());
    file_.write(data, static_cast<std::size_t>(count) * sizeof(float));
    written_ += count;
  }
  std::int64_t written() const { return written_; }

 private:
  AtomicFile& file_;
  const std::string& name_;
  std::int64_t expected_;
  std::int64_t written_ = 0;
};
}  // namespace

std::uint32_t SafetensorsWriter::write(const std::string& path) const {
  AtomicFile file(path);  // removed again if anything below throws
  file.write(header_bytes());
  for (const auto& e : entries_) {
    if (e.raw) {
      file.write(e.raw->data(), e.raw->size());
      continue;
    }
    const std::int64_t n = shape_numel(e.shape);
    CountingSink sink(file, e.name, n);
    e.provider(sink);
    TRI_CHECK(sink.written() == n,
              "the provider of tensor '{}' {} wrote {} of its {} elements while writing '{}'",
              e.name, shape_str(e.shape), sink.written(), n, path);
  }
  file.commit();
  return file.crc32c();
}

}  // namespace trident::ckpt
