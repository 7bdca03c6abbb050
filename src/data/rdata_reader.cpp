// R lazy-load database reader and XDR unserialiser; see rdata_reader.h.
#include "data/rdata_reader.h"

#include <zlib.h>

#include <bit>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/check.h"

namespace trident::data {
namespace {

std::string read_whole_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TRI_CHECK(in.good(), "cannot open {}: {}. Run scripts/fetch_assets.sh to download it", path, std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string latin1_to_utf8(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back(static_cast<char>(0xC0 | (c >> 6)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    }
  }
  return out;
}

// Reads R's XDR serialisation: big-endian int32 and IEEE double, length-prefixed strings.
class XdrReader {
 public:
  XdrReader(std::string_view bytes, const std::string& source) : bytes_(bytes), source_(source) {}

  RObject read_document() {
    TRI_CHECK(bytes_.substr(0, 2) == "X\n",
              "{}: not an R object in XDR format (it should start with \"X\\n\"); only R's default format is "
              "supported",
              source_);
    pos_ = 2;
    const int32_t version = read_int();
    TRI_CHECK(version == 2 || version == 3, "{}: R serialisation version {} is not supported (2 or 3)", source_, version);
    read_int();  // R version that wrote it
    read_int();  // minimal R version to read it
    if (version == 3) {
      const int32_t n = read_int();
      read_bytes(n);  // native encoding, e.g. "UTF-8"
    }
    RObject obj = read_item();
    return obj;
  }

 private:
  int32_t read_int() {
    TRI_CHECK(pos_ + 4 <= bytes_.size(), "{}: serialised R object ends early at byte {} (truncated?)", source_, pos_);
    uint32_t v;
    std::memcpy(&v, bytes_.data() + pos_, 4);
    pos_ += 4;
    if constexpr (std::endian::native == std::endian::little) v = __builtin_bswap32(v);
    return static_cast<int32_t>(v);
  }
  double read_double() {
    TRI_CHECK(pos_ + 8 <= bytes_.size(), "{}: serialised R object ends early at byte {} (truncated?)", source_, pos_);
    uint64_t v;
    std::memcpy(&v, bytes_.data() + pos_, 8);
    pos_ += 8;
    if constexpr (std::endian::native == std::endian::little) v = __builtin_bswap64(v);
    return std::bit_cast<double>(v);
  }
  std::string_view read_bytes(int64_t n) {
    TRI_CHECK(n >= 0 && pos_ + static_cast<size_t>(n) <= bytes_.size(),
              "{}: a string of {} bytes at byte {} runs past the end of the object (truncated?)", source_, n, pos_);
    const auto s = bytes_.substr(pos_, static_cast<size_t>(n));
    pos_ += static_cast<size_t>(n);
    return s;
  }
  int64_t read_length() {
    const int32_t n = read_int();
    if (n != -1) {
      TRI_CHECK(n >= 0, "{}: negative vector length {} at byte {}", source_, n, pos_);
      return n;
    }
    const auto hi = static_cast<uint32_t>(read_int()), lo = static_cast<uint32_t>(read_int());
    return (static_cast<int64_t>(hi) << 32) | lo;
  }
  // CHARSXP payload (flags already read): NA when the length is -1.
  std::optional<std::string> read_charsxp(int32_t flags) {
    const int32_t n = read_int();
    if (n == -1) return std::nullopt;
    const std::string_view raw = read_bytes(n);
    const int levels = flags >> 12;
    constexpr int kLatin1 = 1 << 2;
    return (levels & kLatin1) ? latin1_to_utf8(raw) : std::string(raw);
  }
  void read_attributes(RObject* obj) {
    RObject attrs = read_item();
    TRI_CHECK(attrs.type == kRList, "{}: attributes are not a pairlist (type {})", source_, attrs.type);
    obj->attribute_names = std::move(attrs.tags);
    obj->attribute_values = std::move(attrs.items);
  }

  RObject read_item() {
    const int32_t flags = read_int();
    const int type = flags & 0xFF;
    const bool has_attr = (flags & (1 << 9)) != 0, has_tag = (flags & (1 << 10)) != 0;
    RObject obj;
    switch (type) {
      case 254:  // NILVALUE_SXP
        obj.type = kRNil;
        return obj;
      case 255: {  // REFSXP: an earlier symbol
        int32_t index = flags >> 8;
        if (index == 0) index = read_int();
        TRI_CHECK(index >= 1 && static_cast<size_t>(index) <= refs_.size(), "{}: reference {} to an unknown object",
                  source_, index);
        return refs_[static_cast<size_t>(index) - 1];
      }
      case kRSym: {
        const int32_t char_flags = read_int();
        TRI_CHECK((char_flags & 0xFF) == kRChar, "{}: a symbol's name is not a string", source_);
        obj.type = kRSym;
        obj.strings.push_back(read_charsxp(char_flags).value_or("NA"));
        refs_.push_back(obj);
        return obj;
      }
      case kRList: {  // pairlist: (attr) (tag) car cdr, with the cdr chain read iteratively
        obj.type = kRList;
        int32_t cell_flags = flags;
        while (true) {
          if (cell_flags & (1 << 9)) read_item();  // attributes on a cell: unused
          std::string tag;
          if (cell_flags & (1 << 10)) {
            const RObject t = read_item();
            if (!t.strings.empty() && t.strings[0]) tag = *t.strings[0];
          }
          obj.tags.push_back(std::move(tag));
          obj.items.push_back(read_item());
          cell_flags = read_int();
          if ((cell_flags & 0xFF) == 254) break;
          TRI_CHECK((cell_flags & 0xFF) == kRList, "{}: malformed pairlist (cell of type {})", source_,
                    cell_flags & 0xFF);
        }
        return obj;
      }
      case kRChar:
        obj.type = kRChar;
        obj.strings.push_back(read_charsxp(flags));
        return obj;
      case kRLogical:
      case kRInt: {
        obj.type = type;
        const int64_t n = read_length();
        obj.ints.reserve(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) obj.ints.push_back(read_int());
        break;
      }
      case kRReal: {
        obj.type = type;
        const int64_t n = read_length();
        obj.reals.reserve(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) obj.reals.push_back(read_double());
        break;
      }
      case kRString: {
        obj.type = type;
        const int64_t n = read_length();
        obj.strings.reserve(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) {
          const int32_t char_flags = read_int();
          TRI_CHECK((char_flags & 0xFF) == kRChar, "{}: element {} of a character vector has type {}, expected 9",
                    source_, i, char_flags & 0xFF);
          obj.strings.push_back(read_charsxp(char_flags));
        }
        break;
      }
      case kRVector:
      case 20: {  // VECSXP, EXPRSXP
        obj.type = kRVector;
        const int64_t n = read_length();
        for (int64_t i = 0; i < n; ++i) obj.items.push_back(read_item());
        break;
      }
      default:
        TRI_FAIL("{}: R object type {} at byte {} is not supported by this reader (only plain data vectors and lists)",
                 source_, type, pos_ - 4);
    }
    (void)has_tag;
    if (has_attr) read_attributes(&obj);
    return obj;
  }

  std::string_view bytes_;
  const std::string& source_;
  size_t pos_ = 0;
  std::vector<RObject> refs_;
};

}  // namespace

const RObject* RObject::attribute(std::string_view name) const {
  for (size_t i = 0; i < attribute_names.size(); ++i) {
    if (attribute_names[i] == name) return &attribute_values[i];
  }
  return nullptr;
}

const RObject* RObject::element(std::string_view name) const {
  if (type == kRList) {
    for (size_t i = 0; i < tags.size(); ++i) {
      if (tags[i] == name) return &items[i];
    }
    return nullptr;
  }
  const RObject* names = attribute("names");
  if (names == nullptr) return nullptr;
  for (size_t i = 0; i < names->strings.size() && i < items.size(); ++i) {
    if (names->strings[i] && *names->strings[i] == name) return &items[i];
  }
  return nullptr;
}

RObject r_unserialize(std::string_view bytes, const std::string& source) {
  return XdrReader(bytes, source).read_document();
}

std::string inflate_bytes(std::string_view compressed, bool gzip, size_t expected_size, const std::string& source) {
  z_stream zs{};
  TRI_CHECK(inflateInit2(&zs, gzip ? 16 + MAX_WBITS : MAX_WBITS) == Z_OK, "{}: zlib initialisation failed", source);
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(compressed.data()));
  zs.avail_in = static_cast<uInt>(compressed.size());
  std::string out(expected_size > 0 ? expected_size : compressed.size() * 4 + 1024, '\0');
  int rc = Z_OK;
  while (true) {
    if (zs.total_out == out.size()) out.resize(out.size() * 2);
    zs.next_out = reinterpret_cast<Bytef*>(out.data() + zs.total_out);
    zs.avail_out = static_cast<uInt>(out.size() - zs.total_out);
    rc = inflate(&zs, Z_NO_FLUSH);
    if (rc != Z_OK) break;
    if (zs.avail_in == 0 && zs.avail_out != 0) break;  // input ran out before the end marker
  }
  const size_t produced = zs.total_out;
  const std::string msg = zs.msg != nullptr ? zs.msg : "";
  inflateEnd(&zs);
  TRI_CHECK(rc == Z_STREAM_END, "{}: corrupt or truncated {} stream (zlib code {}{}{}). Re-run scripts/fetch_assets.sh",
            source, gzip ? "gzip" : "zlib", rc, msg.empty() ? "" : ": ", msg);
  out.resize(produced);
  TRI_CHECK(expected_size == 0 || produced == expected_size, "{}: inflated to {} bytes, expected {}", source, produced,
            expected_size);
  return out;
}

std::vector<RdbEntry> read_rdx_index(const std::string& rdx_path) {
  const std::string raw = read_whole_file(rdx_path);
  const std::string bytes = inflate_bytes(raw, /*gzip=*/true, 0, rdx_path);
  const RObject index = r_unserialize(bytes, rdx_path);
  const RObject* variables = index.element("variables");
  TRI_CHECK(variables != nullptr && variables->type == kRVector,
            "{}: not an R lazy-load index (no 'variables' list)", rdx_path);
  const RObject* names = variables->attribute("names");
  TRI_CHECK(names != nullptr && names->strings.size() == variables->items.size(), "{}: 'variables' has no names",
            rdx_path);
  std::vector<RdbEntry> entries;
  for (size_t i = 0; i < variables->items.size(); ++i) {
    const RObject& range = variables->items[i];
    TRI_CHECK(range.type == kRInt && range.ints.size() == 2, "{}: entry {} is not an (offset, length) pair", rdx_path, i);
    entries.push_back({names->strings[i].value_or(""), range.ints[0], range.ints[1]});
  }
  return entries;
}

RObject read_rdb_object(const std::string& rdb_path, const std::string& name) {
  std::string rdx_path = rdb_path;
  TRI_CHECK(rdx_path.size() > 4 && rdx_path.ends_with(".rdb"), "{}: an R lazy-load database must end in .rdb",
            rdb_path);
  rdx_path.replace(rdx_path.size() - 4, 4, ".rdx");
  const auto entries = read_rdx_index(rdx_path);
  const RdbEntry* entry = nullptr;
  std::string known;
  for (const auto& e : entries) {
    if (e.name == name) entry = &e;
    known += (known.empty() ? "" : ", ") + e.name;
  }
  TRI_CHECK(entry != nullptr, "{} holds no object '{}' (it holds: {})", rdb_path, name, known);
  const std::string rdb = read_whole_file(rdb_path);
  const std::string source = fmt::format("{} (object '{}')", rdb_path, name);
  TRI_CHECK(entry->offset >= 0 && entry->length >= 5 &&
                static_cast<size_t>(entry->offset + entry->length) <= rdb.size(),
            "{}: its byte range [{}, {}) lies outside the {}-byte file: truncated? Re-run scripts/fetch_assets.sh",
            source, entry->offset, entry->offset + entry->length, rdb.size());
  const auto* p = reinterpret_cast<const unsigned char*>(rdb.data()) + entry->offset;
  const size_t size = (size_t{p[0]} << 24) | (size_t{p[1]} << 16) | (size_t{p[2]} << 8) | size_t{p[3]};
  TRI_CHECK(p[4] == 0x78, "{}: compression other than zlib (first byte {:#x}) is not supported", source, p[4]);
  const std::string bytes = inflate_bytes(
      std::string_view(rdb).substr(static_cast<size_t>(entry->offset) + 4, static_cast<size_t>(entry->length) - 4),
      /*gzip=*/false, size, source);
  return r_unserialize(bytes, source);
}

std::vector<std::string> read_rdb_character_vector(const std::string& rdb_path, const std::string& name) {
  RObject obj = read_rdb_object(rdb_path, name);
  TRI_CHECK(obj.type == kRString, "{}: object '{}' has R type {}, expected a character vector (16)", rdb_path, name,
            obj.type);
  std::vector<std::string> out;
  out.reserve(obj.strings.size());
  for (size_t i = 0; i < obj.strings.size(); ++i) {
    TRI_CHECK(obj.strings[i].has_value(), "{}: element {} of '{}' is NA", rdb_path, i, name);
    out.push_back(std::move(*obj.strings[i]));
  }
  return out;
}

}  // namespace trident::data
