// safetensors writer/reader: round trip, streaming providers, interchange with a file written
// by Python by hand, and one clear error per kind of corruption.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "ckpt/checksums.h"
#include "ckpt/safetensors.h"
#include "core/check.h"
#include "../support/expect_error.h"
#include "../support/temp_dir.h"

namespace fs = std::filesystem;
using namespace trident;
using namespace trident::ckpt;

namespace {

using trident::test::error_of;

using trident::test::TempDir;

// Writes an arbitrary (possibly broken) safetensors file: 8-byte length, header, data.
void write_raw(const std::string& path, const std::string& header, const std::string& data,
               std::uint64_t header_len_override = 0) {
  std::ofstream out(path, std::ios::binary);
  const std::uint64_t n = header_len_override ? header_len_override : header.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header << data;
}


std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace

TEST(CkptSafetensors, RoundTripWithMetadataAndChunkedProvider) {
  TempDir dir;
  const std::vector<float> a = {1, 2, 3, 4, 5, 6};
  std::vector<float> big(1000);
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = 0.5f * static_cast<float>(i) - 3.f;
  SafetensorsWriter w;
  w.add_tensor("a", {2, 3}, a.data());
  w.add_tensor("scalar", {}, a.data() + 5);
  w.add_tensor("empty", {0, 4}, nullptr);
  w.add_tensor("big.weight", {10, 100}, [&](TensorSink& sink) {
    for (int r = 0; r < 10; ++r) sink.write(big.data() + r * 100, 100);  // one row at a time
  });
  w.set_metadata("format", "pt");
  w.set_metadata("quote\"d", "va\\lue\n");
  const std::string path = dir.sub("x.safetensors");
  w.write(path);

  EXPECT_EQ(fs::file_size(path), w.file_size());
  const std::string bytes = read_all(path);
  std::uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u) << "header must be padded to a multiple of 8";
  EXPECT_EQ(bytes.substr(0, w.header_bytes().size()), w.header_bytes());

  SafetensorsReader r(path);
  ASSERT_EQ(r.tensors().size(), 4u);
  EXPECT_EQ(r.metadata().at("format"), "pt");
  EXPECT_EQ(r.metadata().at("quote\"d"), "va\\lue\n");
  EXPECT_EQ(r.get("a", {2, 3}), a);
  EXPECT_EQ(r.get("scalar", {}), std::vector<float>{6});
  EXPECT_TRUE(r.get("empty", {0, 4}).empty());
  EXPECT_EQ(r.get("big.weight", {10, 100}), big);
  EXPECT_EQ(r.info("big.weight").dtype, DType::kF32);
  // File offsets promised by the writer match what the reader found.
  const auto offsets = w.file_offsets();
  const std::uint64_t data_start = 8 + n;
  EXPECT_EQ(offsets[0], data_start + r.info("a").begin);
  EXPECT_EQ(offsets[3], data_start + r.info("big.weight").begin);
}

TEST(CkptSafetensors, ProviderThatWritesTooLittleOrThrowsLeavesNoFile) {
  TempDir dir;
  const std::string path = dir.sub("x.safetensors");
  std::vector<float> v(8, 1.f);
  {
    SafetensorsWriter w;
    w.add_tensor("t", {8}, [&](TensorSink& sink) { sink.write(v.data(), 5); });
    EXPECT_ERROR_HAS(w.write(path), "wrote 5 of its 8 elements");
  }
  {
    SafetensorsWriter w;
    w.add_tensor("t", {8}, [&](TensorSink& sink) { sink.write(v.data(), 9); });
    EXPECT_ERROR_HAS(w.write(path), "wrote more than its 8 elements");
  }
  {
    SafetensorsWriter w;
    w.add_tensor("t", {8}, [&](TensorSink& sink) {
      sink.write(v.data(), 4);
      throw Error("gather failed");
    });
    EXPECT_THROW(w.write(path), Error);
  }
  EXPECT_FALSE(fs::exists(path));
  EXPECT_TRUE(fs::is_empty(dir.path())) << "temporary files must be cleaned up";
}

TEST(CkptSafetensors, WriterRejectsDuplicateNames) {
  SafetensorsWriter w;
  float x = 0;
  w.add_tensor("t", {1}, &x);
  EXPECT_ERROR_HAS(w.add_tensor("t", {1}, &x), "added twice");
  EXPECT_ERROR_HAS(w.add_tensor("__metadata__", {1}, &x), "invalid");
}

// A file written by Python by hand (numpy, no safetensors package): F32, F16 (incl. subnormal,
// max, inf) and BF16; and Python reading ours back.
TEST(CkptSafetensors, InterchangeWithPython) {
  if (!fs::exists("/usr/bin/python3")) GTEST_SKIP() << "/usr/bin/python3 not available";
  TempDir dir;
  const std::string py_file = dir.sub("py.safetensors");
  const std::string script = dir.sub("gen.py");
  {
    std::ofstream s(script);
    s << R"PY(
import json, struct, sys
import numpy as np
a = np.arange(6, dtype=np.float32).reshape(2, 3) * 0.25 - 0.5
b = np.array([1.0, -2.5, 2.0**-14, 2.0**-24, 65504.0, np.inf], dtype=np.float16)
c32 = np.array([1.0, -3.0, 0.15625], dtype=np.float32)
c = (c32.view(np.uint32) >> 16).astype(np.uint16)  # bf16 = top half of fp32
blobs = [("a", "F32", [2, 3], a.tobytes()), ("b", "F16", [6], b.tobytes()), ("c", "BF16", [3], c.tobytes())]
header, off = {"__metadata__": {"format": "pt"}}, 0
for name, dt, shape, raw in blobs:
    header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
    off += len(raw)
h = json.dumps(header).encode()
h += b" " * ((8 - len(h) % 8) % 8)
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + b"".join(x[3] for x in blobs))
)PY";
  }
  ASSERT_EQ(std::system(("/usr/bin/python3 " + script + " " + py_file).c_str()), 0);
  SafetensorsReader r(py_file);
  EXPECT_EQ(r.info("b").dtype, DType::kF16);
  EXPECT_EQ(r.info("c").dtype, DType::kBF16);
  EXPECT_EQ(r.get("a", {2, 3}), (std::vector<float>{-0.5f, -0.25f, 0.f, 0.25f, 0.5f, 0.75f}));
  const auto b = r.get("b", {6});
  EXPECT_EQ(b[0], 1.0f);
  EXPECT_EQ(b[1], -2.5f);
  EXPECT_EQ(b[2], std::ldexp(1.0f, -14));
  EXPECT_EQ(b[3], std::ldexp(1.0f, -24));
  EXPECT_EQ(b[4], 65504.0f);
  EXPECT_TRUE(std::isinf(b[5]));
  EXPECT_EQ(r.get("c", {3}), (std::vector<float>{1.0f, -3.0f, 0.15625f}));

  // And the other direction: Python parses our file by hand.
  const std::string ours = dir.sub("ours.safetensors");
  std::vector<float> w(12);
  for (int i = 0; i < 12; ++i) w[i] = static_cast<float>(i) / 8.f;
  SafetensorsWriter writer;
  writer.add_tensor("h.0.attn.c_attn.weight", {3, 4}, w.data());
  writer.set_metadata("format", "pt");
  writer.write(ours);
  const std::string check = dir.sub("check.py");
  {
    std::ofstream s(check);
    s << R"PY(
import json, struct, sys
import numpy as np
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
assert n % 8 == 0, n
h = json.loads(raw[8:8 + n])
t = h["h.0.attn.c_attn.weight"]
assert t["dtype"] == "F32" and t["shape"] == [3, 4], t
b, e = t["data_offsets"]
x = np.frombuffer(raw[8 + n + b: 8 + n + e], dtype="<f4").reshape(3, 4)
assert np.array_equal(x, np.arange(12, dtype=np.float32).reshape(3, 4) / 8), x
assert h["__metadata__"] == {"format": "pt"}
assert 8 + n + e == len(raw)
)PY";
  }
  EXPECT_EQ(std::system(("/usr/bin/python3 " + check + " " + ours).c_str()), 0);
}

TEST(CkptSafetensors, MissingNameListsCloseNamesAndShapeMismatchIsClear) {
  TempDir dir;
  std::vector<float> v(6, 0.f);
  SafetensorsWriter w;
  w.add_tensor("h.0.mlp.c_fc.weight", {2, 3}, v.data());
  w.add_tensor("h.0.mlp.c_proj.weight", {3, 2}, v.data());
  w.write(dir.sub("m.safetensors"));
  SafetensorsReader r(dir.sub("m.safetensors"));
  EXPECT_ERROR_HAS(r.get("h.0.mlp.c_fc.weigth", {2, 3}), "tensor 'h.0.mlp.c_fc.weigth' not found",
                   "m.safetensors", "close names: h.0.mlp.c_fc.weight");
  EXPECT_ERROR_HAS(r.get("h.0.mlp.c_fc.weight", {3, 2}), "has shape [2, 3] but [3, 2] was expected");
}

TEST(CkptSafetensors, MissingFileIsClear) {
  EXPECT_ERROR_HAS(SafetensorsReader("/nonexistent/dir/x.safetensors"),
                   "cannot open safetensors file '/nonexistent/dir/x.safetensors'");
}

// Each corruption gets its own message, naming the file.
TEST(CkptSafetensors, CorruptFilesGiveSpecificErrors) {
  TempDir dir;
  const std::string p = dir.sub("bad.safetensors");
  const std::string d16(16, '\0');
  auto open = [&] { SafetensorsReader r(p); };

  {  // shorter than the length field
    std::ofstream(p, std::ios::binary) << "abc";
    EXPECT_ERROR_HAS(open(), "corrupt safetensors header in", "bad.safetensors",
                     "shorter than the 8-byte header length");
  }
  {  // header length beyond the file
    write_raw(p, R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", d16, 1ull << 40);
    EXPECT_ERROR_HAS(open(), "corrupt safetensors header", "header length 1099511627776 exceeds");
  }
  {  // truncated data: a valid file cut short
    SafetensorsWriter w;
    std::vector<float> v(64, 1.f);
    w.add_tensor("a", {64}, v.data());
    w.write(p);
    fs::resize_file(p, fs::file_size(p) - 10);
    EXPECT_ERROR_HAS(open(), "corrupt safetensors header", "tensor 'a'", "beyond", "truncated");
  }
  {  // not JSON
    write_raw(p, "{\"a\": [1, 2", d16);
    EXPECT_ERROR_HAS(open(), "corrupt safetensors header", "not valid JSON");
  }
  {  // not a safetensors file at all
    write_raw(p, "GARBAGE!", d16);
    EXPECT_ERROR_HAS(open(), "does not start with '{'");
  }
  {  // offsets out of range
    write_raw(p, R"({"a":{"dtype":"F32","shape":[250],"data_offsets":[0,1000]}})", d16);
    EXPECT_ERROR_HAS(open(), "tensor 'a'", "data_offsets [0, 1000] lie beyond the 16 data bytes");
  }
  {  // overlapping tensors
    write_raw(p, R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                 R"("b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
              std::string(24, '\0'));
    EXPECT_ERROR_HAS(open(), "tensors 'a' [0, 16] and 'b' [8, 24] overlap");
  }
  {  // a hole between tensors
    write_raw(p, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                 R"("b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})",
              std::string(20, '\0'));
    EXPECT_ERROR_HAS(open(), "4 unclaimed bytes of data before tensor 'b'");
  }
  {  // trailing bytes nobody claims
    write_raw(p, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", d16);
    EXPECT_ERROR_HAS(open(), "cover 8 bytes but the file holds 16 data bytes");
  }
  {  // unknown dtype
    write_raw(p, R"({"a":{"dtype":"F33","shape":[4],"data_offsets":[0,16]}})", d16);
    EXPECT_ERROR_HAS(open(), "tensor 'a'", "unknown dtype 'F33'", "known: BOOL");
  }
  {  // shape does not match the byte count
    write_raw(p, R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", d16);
    EXPECT_ERROR_HAS(open(), "shape [3] of F32 needs 12 bytes but data_offsets [0, 16] hold 16");
  }
  {  // end before begin
    write_raw(p, R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[16,0]}})", d16);
    EXPECT_ERROR_HAS(open(), "end before they begin");
  }
  {  // negative dimension
    write_raw(p, R"({"a":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", d16);
    EXPECT_ERROR_HAS(open(), "shape entry -4 is not a non-negative integer");
  }
  {  // missing field, unknown field, metadata of the wrong type
    write_raw(p, R"({"a":{"dtype":"F32","shape":[4]}})", d16);
    EXPECT_ERROR_HAS(open(), "'data_offsets' must be an array");
    write_raw(p, R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16],"x":1}})", d16);
    EXPECT_ERROR_HAS(open(), "unknown field 'x'");
    write_raw(p, R"({"__metadata__":{"step":3},"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", d16);
    EXPECT_ERROR_HAS(open(), "__metadata__ value of 'step' is not a string");
  }
  {  // a valid file with a dtype that is not a float: opens, but reading as fp32 fails clearly
    write_raw(p, R"({"ids":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}})", d16);
    SafetensorsReader r(p);
    EXPECT_ERROR_HAS(r.get("ids", {2}), "tensor 'ids'", "has dtype I64, which cannot be read as fp32");
  }
}

// read_range (a rank's slice, by pread): bitwise the slice of read() for every dtype readable as
// fp32, across read_range's 16384-element pieces of the 16-bit dtypes, counting exactly the bytes
// asked for; a range outside the tensor and a file that shrank after opening are clear errors.
TEST(CkptSafetensors, ReadRangeIsTheSliceOfReadAndCountsItsBytes) {
  TempDir dir;
  struct T {
    const char* name;
    const char* dtype;
    std::int64_t n;
    std::size_t size;
  };
  const T tensors[] = {{"a", "F32", 35, 4}, {"b", "BF16", 40000, 2}, {"c", "F16", 100, 2}, {"d", "F64", 9, 8}};
  std::string header = "{", data;
  for (const T& t : tensors) {
    const std::size_t begin = data.size();
    for (std::int64_t i = 0; i < t.n; ++i) {
      if (t.size == 4) {
        const float x = 0.5f * static_cast<float>(i) - 3.f;
        data.append(reinterpret_cast<const char*>(&x), 4);
      } else if (t.size == 8) {
        const double x = 1.0 / (1.0 + static_cast<double>(i));
        data.append(reinterpret_cast<const char*>(&x), 8);
      } else {
        const auto bits = static_cast<std::uint16_t>(i * 2654435761u >> 7);  // every kind of 16-bit pattern
        data.append(reinterpret_cast<const char*>(&bits), 2);
      }
    }
    header += std::string(header.size() > 1 ? "," : "") + "\"" + t.name + "\":{\"dtype\":\"" + t.dtype +
              "\",\"shape\":[" + std::to_string(t.n) + "],\"data_offsets\":[" + std::to_string(begin) + "," +
              std::to_string(data.size()) + "]}";
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');
  const std::string path = dir.sub("r.safetensors");
  write_raw(path, header, data);
  const SafetensorsReader r(path);
  std::uint64_t expected = 0;
  for (const T& t : tensors) {
    const std::vector<float> whole = r.get(t.name, {t.n});
    expected += static_cast<std::uint64_t>(t.n) * t.size;  // read() counts too
    const std::int64_t ranges[][2] = {{0, t.n}, {0, 0}, {t.n, 0}, {1, t.n - 2}, {t.n / 3, t.n / 2}, {t.n - 1, 1}};
    for (const auto& [begin, count] : ranges) {
      std::vector<float> part(static_cast<std::size_t>(count) + 1, 7.f);
      r.read_range(t.name, {t.n}, begin, count, part.data());
      EXPECT_EQ(std::memcmp(part.data(), whole.data() + begin, static_cast<std::size_t>(count) * 4), 0)
          << t.name << " [" << begin << ", +" << count << ")";
      EXPECT_EQ(part.back(), 7.f) << "wrote past the range";
      expected += static_cast<std::uint64_t>(count) * t.size;
    }
  }
  EXPECT_EQ(r.bytes_read(), expected);
  {
    // checksum_reads(): the CRC of the reads, every dtype and across read_range's pieces, joined
    // with the parts never read (the header, "a", the start of "b") is the file's.
    const SafetensorsReader folded(path);
    folded.checksum_reads();
    std::vector<float> v(40000);
    folded.read_range("b", {40000}, 20001, 19999, v.data());
    folded.read_range("b", {40000}, 17, 20000, v.data());  // overlaps the read before
    folded.read("d", {9}, v.data());
    folded.read("c", {100}, v.data());
    std::vector<std::byte> raw(folded.raw("a").size());  // read_raw: the bytes as they are, checksummed too
    folded.read_raw("a", raw);
    EXPECT_EQ(std::memcmp(raw.data(), folded.raw("a").data(), raw.size()), 0);
    EXPECT_ERROR_HAS(folded.read_raw("a", std::span<std::byte>(raw).first(raw.size() - 1)), "read_raw of 'a'");
    const std::uint64_t before = folded.bytes_read();
    EXPECT_EQ(folded.file_crc32c(), file_crc32c(path));
    EXPECT_EQ(folded.file_crc32c(), SafetensorsReader(path).file_crc32c());  // nothing recorded: one whole pass
    EXPECT_GT(folded.bytes_read(), before);
  }
  std::vector<float> out(64);
  EXPECT_ERROR_HAS(r.read_range("a", {35}, 30, 6, out.data()), "elements [30, 36) of tensor 'a'", "it has 35");
  EXPECT_ERROR_HAS(r.read_range("a", {35}, -1, 2, out.data()), "elements [-1, 1)");
  EXPECT_ERROR_HAS(r.read_range("a", {5, 7}, 0, 2, out.data()), "has shape [35] but [5, 7] was expected");
  fs::resize_file(path, 8 + header.size() + 10);  // shrinks after the open: inside "a"
  EXPECT_ERROR_HAS(r.read_range("a", {35}, 0, 35, out.data()), "reading tensor 'a' from", "the file ended early");
}
