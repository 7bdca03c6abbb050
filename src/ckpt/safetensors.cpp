// safetensors: the dtype table and a strict, memory-mapped reader (the writer: safetensors_writer.cpp).
#include "ckpt/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/crc32c.h"

namespace trident::ckpt {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; a big-endian host needs byte swapping here");

namespace {

struct DTypeEntry {
  DType dtype;
  const char* name;
  std::size_t size;
};
constexpr DTypeEntry kDTypes[] = {
    {DType::kBool, "BOOL", 1}, {DType::kU8, "U8", 1},         {DType::kI8, "I8", 1},
    {DType::kF8E4M3, "F8_E4M3", 1}, {DType::kF8E5M2, "F8_E5M2", 1}, {DType::kI16, "I16", 2},
    {DType::kU16, "U16", 2},   {DType::kF16, "F16", 2},       {DType::kBF16, "BF16", 2},
    {DType::kI32, "I32", 4},   {DType::kU32, "U32", 4},       {DType::kF32, "F32", 4},
    {DType::kF64, "F64", 8},   {DType::kI64, "I64", 8},       {DType::kU64, "U64", 8},
};

constexpr std::uint64_t kMaxHeaderBytes = 100u << 20;  // the reference implementation's limit

float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1Fu;
  std::uint32_t mant = h & 0x3FFu;
  std::uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400u) == 0);
      bits = sign | (static_cast<std::uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3FFu) << 13);
    }
  } else if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);  // inf / nan
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  return std::bit_cast<float>(bits);
}

// n elements of dtype d at src (unaligned little-endian bytes) as fp32 into dst.
void convert_to_f32(DType d, const std::byte* src, std::int64_t n, float* dst) {
  switch (d) {
    case DType::kF32:
      std::memcpy(dst, src, static_cast<std::size_t>(n) * 4);
      break;
    case DType::kF16:
      for (std::int64_t i = 0; i < n; ++i) {
        std::uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = half_to_float(h);
      }
      break;
    case DType::kBF16:
      for (std::int64_t i = 0; i < n; ++i) {
        std::uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = std::bit_cast<float>(static_cast<std::uint32_t>(h) << 16);
      }
      break;
    case DType::kF64:
      for (std::int64_t i = 0; i < n; ++i) {
        double x;
        std::memcpy(&x, src + 8 * i, 8);
        dst[i] = static_cast<float>(x);
      }
      break;
    default:
      TRI_FAIL("unreachable dtype");
  }
}

std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

}  // namespace

const char* dtype_name(DType d) {
  for (const auto& e : kDTypes)
    if (e.dtype == d) return e.name;
  return "?";
}

std::size_t dtype_size(DType d) {
  for (const auto& e : kDTypes)
    if (e.dtype == d) return e.size;
  return 0;
}

bool dtype_readable_as_f32(DType d) {
  return d == DType::kF32 || d == DType::kF16 || d == DType::kBF16 || d == DType::kF64;
}

std::vector<std::string> close_names(const std::string& name,
                                     const std::vector<std::string>& candidates, std::size_t max) {
  std::vector<std::pair<std::size_t, std::string>> scored;
  scored.reserve(candidates.size());
  for (const auto& c : candidates) scored.emplace_back(edit_distance(name, c), c);
  std::stable_sort(scored.begin(), scored.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<std::string> out;
  for (std::size_t i = 0; i < scored.size() && i < max; ++i) out.push_back(scored[i].second);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Reader.

struct SafetensorsReader::Mapping {
  void* addr = nullptr;
  std::size_t size = 0;
  int fd = -1;  // kept open for read_range's pread
  std::atomic<std::uint64_t> bytes_read{0};
  // checksum_reads(): the CRC-32C of each byte range read() and read_range() passed over, by
  // file offset; a range that starts where the last one ended is joined to it (a load's
  // sequential pieces stay one extent).
  struct Extent {
    std::uint64_t begin, end;
    std::uint32_t crc;
  };
  std::mutex mu;
  std::atomic<bool> checksum{false};
  std::vector<Extent> extents;
  void record(std::uint64_t begin, std::uint64_t end, std::uint32_t crc) {
    const std::lock_guard<std::mutex> lock(mu);
    if (!extents.empty() && extents.back().end == begin) {
      extents.back().crc = crc32c_combine(extents.back().crc, crc, end - begin);
      extents.back().end = end;
    } else {
      extents.push_back({begin, end, crc});
    }
  }
  ~Mapping() {
    if (addr != nullptr && addr != MAP_FAILED) ::munmap(addr, size);
    if (fd >= 0) ::close(fd);
  }
};

SafetensorsReader::SafetensorsReader(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    TRI_FAIL("cannot open safetensors file '{}': {}", path, std::strerror(err));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    TRI_FAIL("'{}' is not a regular file", path);
  }
  const std::uint64_t file_size = static_cast<std::uint64_t>(st.st_size);
  auto corrupt = [&](const std::string& what) -> std::string {
    return fmt::format("corrupt safetensors header in {}: {}", path, what);
  };
  if (file_size < 8) {
    ::close(fd);
    TRI_FAIL("{}", corrupt(fmt::format("the file is {} bytes, shorter than the 8-byte header "
                                       "length (truncated, or not a safetensors file)",
                                       file_size)));
  }
  mapping_ = std::make_shared<Mapping>();
  mapping_->size = file_size;
  mapping_->fd = fd;
  mapping_->addr = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  TRI_CHECK(mapping_->addr != MAP_FAILED, "cannot memory-map '{}': {}", path, std::strerror(map_err));
  const auto* base = static_cast<const std::byte*>(mapping_->addr);

  std::uint64_t header_len = 0;
  std::memcpy(&header_len, base, 8);
  TRI_CHECK(header_len > 0, "{}", corrupt("the header length is 0"));
  TRI_CHECK(header_len <= file_size - 8,
            "{}", corrupt(fmt::format("the header length {} exceeds the {} bytes that follow it "
                                      "(file truncated, or not a safetensors file)",
                                      header_len, file_size - 8)));
  TRI_CHECK(header_len <= kMaxHeaderBytes,
            "{}", corrupt(fmt::format("the header length {} is implausibly large (limit {})",
                                      header_len, kMaxHeaderBytes)));
  const char* hdr = reinterpret_cast<const char*>(base + 8);
  TRI_CHECK(hdr[0] == '{', "{}", corrupt("the header does not start with '{' (not a safetensors "
                                         "file?)"));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(hdr, hdr + header_len);
  } catch (const nlohmann::json::exception& e) {
    TRI_FAIL("{}", corrupt(fmt::format("the header is not valid JSON: {}", e.what())));
  }
  TRI_CHECK(j.is_object(), "{}", corrupt("the header is not a JSON object"));

  const std::uint64_t data_size = file_size - 8 - header_len;
  data_ = base + 8 + header_len;
  data_offset_ = 8 + header_len;

  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      TRI_CHECK(v.is_object(), "{}", corrupt("__metadata__ is not an object"));
      for (auto m = v.begin(); m != v.end(); ++m) {
        TRI_CHECK(m.value().is_string(), "{}",
                  corrupt(fmt::format("__metadata__ value of '{}' is not a string", m.key())));
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto bad = [&](const std::string& what) { return corrupt(fmt::format("tensor '{}': {}", name, what)); };
    TRI_CHECK(v.is_object(), "{}", bad("entry is not an object"));
    for (auto f = v.begin(); f != v.end(); ++f) {
      TRI_CHECK(f.key() == "dtype" || f.key() == "shape" || f.key() == "data_offsets", "{}",
                bad(fmt::format("unknown field '{}'", f.key())));
    }
    TRI_CHECK(v.contains("dtype") && v["dtype"].is_string(), "{}", bad("missing or non-string 'dtype'"));
    TRI_CHECK(v.contains("shape") && v["shape"].is_array(), "{}", bad("missing or non-array 'shape'"));
    TRI_CHECK(v.contains("data_offsets") && v["data_offsets"].is_array() && v["data_offsets"].size() == 2,
              "{}", bad("'data_offsets' must be an array [begin, end]"));
    TensorInfo info;
    info.name = name;
    const std::string dt = v["dtype"].get<std::string>();
    bool known = false;
    for (const auto& e : kDTypes) {
      if (dt == e.name) info.dtype = e.dtype, known = true;
    }
    if (!known) {
      std::vector<std::string> all;
      for (const auto& e : kDTypes) all.emplace_back(e.name);
      TRI_FAIL("{}", bad(fmt::format("unknown dtype '{}' (known: {})", dt, fmt::join(all, ", "))));
    }
    unsigned __int128 numel = 1;
    for (const auto& d : v["shape"]) {
      TRI_CHECK(d.is_number_unsigned(), "{}", bad(fmt::format("shape entry {} is not a non-negative integer", d.dump())));
      const auto dim = d.get<std::uint64_t>();
      TRI_CHECK(dim < (std::uint64_t{1} << 62), "{}", bad(fmt::format("shape entry {} is too large", dim)));
      info.shape.push_back(static_cast<std::int64_t>(dim));
      numel *= dim;
      TRI_CHECK(numel < (static_cast<unsigned __int128>(1) << 62), "{}", bad("shape has too many elements"));
    }
    for (const auto& o : v["data_offsets"]) {
      TRI_CHECK(o.is_number_unsigned(), "{}", bad(fmt::format("data offset {} is not a non-negative integer", o.dump())));
    }
    info.begin = v["data_offsets"][0].get<std::uint64_t>();
    info.end = v["data_offsets"][1].get<std::uint64_t>();
    TRI_CHECK(info.begin <= info.end, "{}",
              bad(fmt::format("data_offsets [{}, {}] end before they begin", info.begin, info.end)));
    TRI_CHECK(info.end <= data_size, "{}",
              bad(fmt::format("data_offsets [{}, {}] lie beyond the {} data bytes in the file "
                              "(file truncated?)", info.begin, info.end, data_size)));
    const unsigned __int128 expected_bytes = numel * dtype_size(info.dtype);
    TRI_CHECK(expected_bytes == info.end - info.begin, "{}",
              bad(fmt::format("shape {} of {} needs {} bytes but data_offsets [{}, {}] hold {}",
                              shape_str(info.shape), dt, static_cast<std::uint64_t>(expected_bytes),
                              info.begin, info.end, info.end - info.begin)));
    tensors_.push_back(std::move(info));
  }

  // The tensors must tile the data section exactly: no overlap, no gap, nothing after.
  std::sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::uint64_t cursor = 0;
  const TensorInfo* prev = nullptr;
  for (const auto& t : tensors_) {
    if (t.begin < cursor) {
      TRI_FAIL("{}", corrupt(fmt::format("tensors '{}' [{}, {}] and '{}' [{}, {}] overlap",
                                         prev->name, prev->begin, prev->end, t.name, t.begin, t.end)));
    }
    if (t.begin > cursor) {
      TRI_FAIL("{}", corrupt(fmt::format("{} unclaimed bytes of data before tensor '{}' (offset {})",
                                         t.begin - cursor, t.name, t.begin)));
    }
    cursor = t.end;
    prev = &t;
  }
  TRI_CHECK(cursor == data_size, "{}",
            corrupt(fmt::format("the tensors cover {} bytes but the file holds {} data bytes "
                                "(trailing garbage)", cursor, data_size)));
  for (std::size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
}

std::vector<std::string> SafetensorsReader::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& t : tensors_) out.push_back(t.name);
  return out;
}

const TensorInfo& SafetensorsReader::info(const std::string& name) const {
  const auto it = index_.find(name);
  if (it == index_.end()) {
    const auto close = close_names(name, names());
    TRI_FAIL("tensor '{}' not found in {} ({} tensors){}", name, path_, tensors_.size(),
             close.empty() ? std::string() : fmt::format("; close names: {}", fmt::join(close, ", ")));
  }
  return tensors_[it->second];
}

std::span<const std::byte> SafetensorsReader::raw(const std::string& name) const {
  const auto& t = info(name);
  return {data_ + t.begin, static_cast<std::size_t>(t.end - t.begin)};
}

namespace {

// The CRC-32C of [from, from + bytes), taken piece by piece just before copy(offset, n) moves
// each piece on, while its bytes are in cache: one pass (read(), read_raw()).
template <class Copy>
std::uint32_t copy_checksummed(const std::byte* from, std::size_t bytes, std::size_t piece, Copy&& copy) {
  std::uint32_t crc = 0;
  for (std::size_t done = 0; done < bytes; done += piece) {
    const std::size_t n = std::min(piece, bytes - done);
    crc = crc32c_update(crc, from + done, n);
    copy(done, n);
  }
  return crc;
}

constexpr std::size_t kChecksumPiece = std::size_t{256} << 10;

}  // namespace

void SafetensorsReader::read_raw(const std::string& name, std::span<std::byte> dst) const {
  const auto& t = info(name);
  const auto bytes = static_cast<std::size_t>(t.end - t.begin);
  TRI_CHECK(dst.size() == bytes, "read_raw of '{}' in {}: {} bytes, into a buffer of {}", name, path_, bytes, dst.size());
  mapping_->bytes_read += bytes;
  if (!mapping_->checksum) {
    std::memcpy(dst.data(), data_ + t.begin, bytes);
    return;
  }
  const std::byte* from = data_ + t.begin;
  const std::uint32_t crc = copy_checksummed(from, bytes, kChecksumPiece, [&](std::size_t at, std::size_t n) {
    std::memcpy(dst.data() + at, from + at, n);
  });
  mapping_->record(data_offset_ + t.begin, data_offset_ + t.end, crc);
}

const TensorInfo& SafetensorsReader::readable(const std::string& name, const Shape& expected_shape) const {
  const auto& t = info(name);
  TRI_CHECK(t.shape == expected_shape, "tensor '{}' in {} has shape {} but {} was expected", name,
            path_, shape_str(t.shape), shape_str(expected_shape));
  TRI_CHECK(dtype_readable_as_f32(t.dtype),
            "tensor '{}' in {} has dtype {}, which cannot be read as fp32 (F32, F16, BF16 and F64 can)",
            name, path_, dtype_name(t.dtype));
  return t;
}

void SafetensorsReader::read(const std::string& name, const Shape& expected_shape, float* dst) const {
  const auto& t = readable(name, expected_shape);
  mapping_->bytes_read += t.end - t.begin;
  if (!mapping_->checksum) {
    convert_to_f32(t.dtype, data_ + t.begin, t.numel(), dst);
    return;
  }
  // Pieces of whole elements, each converted right after its CRC.
  const std::size_t es = dtype_size(t.dtype);
  const std::byte* from = data_ + t.begin;
  const std::uint32_t crc = copy_checksummed(
      from, static_cast<std::size_t>(t.numel()) * es, kChecksumPiece / es * es, [&](std::size_t at, std::size_t n) {
        convert_to_f32(t.dtype, from + at, static_cast<std::int64_t>(n / es), dst + at / es);
      });
  mapping_->record(data_offset_ + t.begin, data_offset_ + t.end, crc);
}

void SafetensorsReader::read_range(const std::string& name, const Shape& expected_shape, std::int64_t begin,
                                   std::int64_t count, float* dst) const {
  const auto& t = readable(name, expected_shape);
  TRI_CHECK(begin >= 0 && count >= 0 && begin <= t.numel() - count,
            "elements [{}, {}) of tensor '{}' in {} asked for, but it has {}", begin, begin + count, name, path_,
            t.numel());
  const std::size_t es = dtype_size(t.dtype);
  // F32 lands in dst as read; the other dtypes go through a small buffer and are widened.
  constexpr std::int64_t kPiece = 16384;
  std::vector<std::byte> raw(t.dtype == DType::kF32 ? 0 : static_cast<std::size_t>(std::min(count, kPiece)) * es);
  std::uint32_t crc = 0;  // checksum_reads(): of the bytes as they arrive
  for (std::int64_t done = 0; done < count;) {
    const std::int64_t n = t.dtype == DType::kF32 ? count - done : std::min(count - done, kPiece);
    auto* to = t.dtype == DType::kF32 ? reinterpret_cast<std::byte*>(dst + done) : raw.data();
    const std::size_t bytes = static_cast<std::size_t>(n) * es;
    std::uint64_t at = data_offset_ + t.begin + static_cast<std::uint64_t>(begin + done) * es;
    for (std::size_t got = 0; got < bytes;) {
      const ssize_t r = ::pread(mapping_->fd, to + got, bytes - got, static_cast<off_t>(at + got));
      if (r < 0 && errno == EINTR) continue;
      const int err = errno;
      TRI_CHECK(r > 0, "reading tensor '{}' from {} failed at byte {}: {}", name, path_, at + got,
                r == 0 ? "the file ended early (it shrank after it was opened?)" : std::strerror(err));
      got += static_cast<std::size_t>(r);
    }
    mapping_->bytes_read += bytes;
    if (mapping_->checksum) crc = crc32c_update(crc, to, bytes);
    if (t.dtype != DType::kF32) convert_to_f32(t.dtype, raw.data(), n, dst + done);
    done += n;
  }
  if (mapping_->checksum && count > 0) {
    const std::uint64_t from = data_offset_ + t.begin + static_cast<std::uint64_t>(begin) * es;
    mapping_->record(from, from + static_cast<std::uint64_t>(count) * es, crc);
  }
}

std::uint64_t SafetensorsReader::bytes_read() const { return mapping_->bytes_read.load(); }

void SafetensorsReader::checksum_reads() const { mapping_->checksum = true; }

std::uint32_t SafetensorsReader::file_crc32c() const {
  Mapping& m = *mapping_;
  const std::lock_guard<std::mutex> lock(m.mu);
  std::vector<Mapping::Extent> ext = m.extents;
  // By start, the longest first where two start together (a range read twice counts once).
  std::sort(ext.begin(), ext.end(), [](const Mapping::Extent& a, const Mapping::Extent& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end > b.end;
  });
  std::uint32_t crc = 0;
  std::uint64_t cursor = 0;
  std::vector<std::byte> block;
  // Bytes no read covered (the header, tensors the load left alone) are read now, with pread:
  // nothing of the file stays resident through the mapping.
  auto read_to = [&](std::uint64_t end) {
    if (block.empty()) block.resize(std::size_t{4} << 20);
    while (cursor < end) {
      const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(end - cursor, block.size()));
      const ssize_t r = ::pread(m.fd, block.data(), want, static_cast<off_t>(cursor));
      if (r < 0 && errno == EINTR) continue;
      const int err = errno;
      TRI_CHECK(r > 0, "reading '{}' to check its checksum failed at byte {}: {}", path_, cursor,
                r == 0 ? "the file ended early (it shrank after it was opened?)" : std::strerror(err));
      crc = crc32c_update(crc, block.data(), static_cast<std::size_t>(r));
      cursor += static_cast<std::uint64_t>(r);
      m.bytes_read += static_cast<std::uint64_t>(r);
    }
  };
  for (const Mapping::Extent& e : ext) {
    if (e.end <= cursor) continue;  // inside what is counted already
    if (e.begin > cursor) read_to(e.begin);
    if (e.begin == cursor) {
      crc = crc32c_combine(crc, e.crc, e.end - e.begin);
      cursor = e.end;
    } else {
      read_to(e.end);  // overlaps the counted part: its tail read again
    }
  }
  read_to(m.size);
  return crc;
}

std::vector<float> SafetensorsReader::get(const std::string& name, const Shape& expected_shape) const {
  std::vector<float> out(static_cast<std::size_t>(shape_numel(expected_shape)));
  read(name, expected_shape, out.data());
  return out;
}

}  // namespace trident::ckpt
