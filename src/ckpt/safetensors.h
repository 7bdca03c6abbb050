// The safetensors format: an 8-byte little-endian header length N, N bytes of JSON
// {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}
// padded with spaces to a multiple of 8, then the raw little-endian data.
// The writer streams fp32 tensors one at a time (nothing is held twice); the reader memory-maps
// a file, validates its header strictly and converts F32/F16/BF16/F64 to fp32 on read.
// Which tensors a checkpoint holds is left to checkpoint.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"  // Shape

namespace trident::ckpt {

enum class DType { kBool, kU8, kI8, kF8E4M3, kF8E5M2, kI16, kU16, kF16, kBF16, kI32, kU32, kF32, kF64, kI64, kU64 };

const char* dtype_name(DType d);      // "F32"
std::size_t dtype_size(DType d);      // bytes per element
bool dtype_readable_as_f32(DType d);  // F32, F16, BF16, F64

using Metadata = std::map<std::string, std::string>;

// ---------------------------------------------------------------------------------------------
// Writing.

// Receives a tensor's elements in row-major order, in as many chunks as the producer likes; the
// total must equal the tensor's element count (checked).
class TensorSink {
 public:
  virtual ~TensorSink() = default;
  virtual void write(const float* data, std::int64_t count) = 0;
};

// Produces one tensor's data on demand, when the writer reaches it.
using TensorProvider = std::function<void(TensorSink& sink)>;

// Collects (name, shape, data source) entries, then streams them to a file in the order added.
// Names, shapes and metadata must be known before write() (the header comes first); the data
// itself is pulled from each provider only when write() reaches that tensor.
// Tensors are written as F32, except those added with add_raw_tensor.
class SafetensorsWriter {
 public:
  // `data` must stay valid until write() returns.
  void add_tensor(const std::string& name, const Shape& shape, const float* data);
  void add_tensor(const std::string& name, const Shape& shape, TensorProvider provider);
  // A tensor of any dtype given as its raw little-endian bytes (numel * dtype_size; checked),
  // e.g. packed integer weights. Held by the writer until write().
  void add_raw_tensor(const std::string& name, DType dtype, const Shape& shape, std::vector<std::byte> bytes);
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

  std::size_t size() const { return entries_.size(); }
  // (name, shape) of each tensor added, in order.
  std::vector<std::pair<std::string, Shape>> layout() const;
  bool contains(const std::string& name) const;

  // The header exactly as write() will emit it (8-byte length + padded JSON), and where each
  // tensor's data will start in the file. For ranks that cooperate on one file with pwrite.
  std::string header_bytes() const;
  std::vector<std::uint64_t> file_offsets() const;
  std::uint64_t file_size() const;

  // Streams everything to `path` through AtomicFile: either the complete file appears under
  // `path` or (on any error, including a provider that throws) nothing does. Returns the
  // file's CRC-32C (core/crc32c.h).
  std::uint32_t write(const std::string& path) const;

 private:
  struct Entry {
    std::string name;
    Shape shape;
    TensorProvider provider;  // F32 tensors
    DType dtype = DType::kF32;
    std::shared_ptr<const std::vector<std::byte>> raw;  // add_raw_tensor's bytes
    std::uint64_t bytes() const;
  };
  std::vector<Entry> entries_;
  Metadata metadata_;
};

// ---------------------------------------------------------------------------------------------
// Reading.

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  std::uint64_t begin = 0;  // byte offsets relative to the start of the data section
  std::uint64_t end = 0;
  std::int64_t numel() const { return shape_numel(shape); }
};

// A memory-mapped, validated safetensors file. Every problem with the header throws
// trident::Error "corrupt safetensors header in FILE: ...". Cheap to move; the mapping lives
// until the last copy of the reader is gone.
class SafetensorsReader {
 public:
  explicit SafetensorsReader(const std::string& path);

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in file order
  const Metadata& metadata() const { return metadata_; }
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  std::vector<std::string> names() const;

  // Throws "tensor 'x' not found in FILE; close names: ..." when missing.
  const TensorInfo& info(const std::string& name) const;

  // Reads `name` converted to fp32 into dst (numel floats). Throws when the name is missing,
  // the shape differs from `expected_shape` ("tensor 'x' in FILE has shape [a, b] but [c, d]
  // was expected") or the dtype cannot be converted.
  void read(const std::string& name, const Shape& expected_shape, float* dst) const;
  std::vector<float> get(const std::string& name, const Shape& expected_shape) const;
  // Elements [begin, begin + count) of `name` in row-major order (the same checks as read(),
  // and the range must lie inside the tensor), read with pread rather than through the mapping:
  // only those bytes are read, and none of the file stays resident in this process (a page of
  // the mapping once touched counts in its RSS until the reader is gone). A ZeRO-3 or offloaded
  // rank loads its slices of a checkpoint this way (parallel/layout_state.h).
  void read_range(const std::string& name, const Shape& expected_shape, std::int64_t begin, std::int64_t count,
                  float* dst) const;
  // Bytes read() and read_range() have passed over, and file_crc32c() read, since the file was
  // opened (all copies of this reader).
  std::uint64_t bytes_read() const;

  // From now on read() and read_range() also checksum the bytes they pass over (CRC-32C, as
  // they read them: no second pass), so that file_crc32c() after a load that read the tensors
  // reads only what the load did not (the header, tensors left alone). A whole-file load's
  // checksum check is then folded into its reads (ckpt/checksums.h).
  void checksum_reads() const;
  // CRC-32C of the whole file: the reads checksum_reads() recorded, joined in file order
  // (core/crc32c.h's combine), and the rest of the file read now through pread. Without
  // checksum_reads() that is one whole pass over the file.
  std::uint32_t file_crc32c() const;

  // Raw bytes of a tensor inside the mapping (any dtype).
  std::span<const std::byte> raw(const std::string& name) const;
  // A copy of those bytes (any dtype; dst.size() must be the tensor's byte count), counted in
  // bytes_read() and, after checksum_reads(), checksummed as they are copied as read() does.
  void read_raw(const std::string& name, std::span<std::byte> dst) const;

 private:
  struct Mapping;
  std::string path_;
  std::shared_ptr<Mapping> mapping_;
  const std::byte* data_ = nullptr;  // start of the data section
  std::uint64_t data_offset_ = 0;    // ... and its offset in the file
  // info(name), checked to have `expected_shape` and a dtype readable as fp32.
  const TensorInfo& readable(const std::string& name, const Shape& expected_shape) const;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::size_t> index_;
  Metadata metadata_;
};

// Up to `max` of `candidates` closest to `name` (edit distance), best first.
std::vector<std::string> close_names(const std::string& name,
                                     const std::vector<std::string>& candidates,
                                     std::size_t max = 3);

}  // namespace trident::ckpt
