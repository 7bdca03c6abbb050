// Reading R's lazy-load databases (a package's data/Rdata.rdb + Rdata.rdx) without R: the
// .rdx is a gzip-compressed serialised list mapping object names to (offset, length) in the
// .rdb; each .rdb object is a 4-byte big-endian uncompressed length and a zlib stream holding
// one serialised R object. The unserialiser covers the plain data types data packages use
// (character, integer, logical, double vectors, lists, pairlists, symbols, attributes) in
// R's XDR format, versions 2 and 3; anything else is a clear error.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace trident::data {

// SEXPTYPE codes from R's Rinternals.h.
enum RType : int {
  kRNil = 0, kRSym = 1, kRList = 2, kRChar = 9, kRLogical = 10, kRInt = 13, kRReal = 14, kRString = 16,
  kRVector = 19,
};

struct RObject {
  int type = kRNil;
  std::vector<std::optional<std::string>> strings;  // kRString elements (nullopt = NA); kRSym/kRChar: one
  std::vector<int32_t> ints;                        // kRInt, kRLogical
  std::vector<double> reals;                        // kRReal
  std::vector<RObject> items;                       // kRVector elements, kRList values
  std::vector<std::string> tags;                    // kRList tags, parallel to items ("" when none)
  std::vector<std::string> attribute_names;
  std::vector<RObject> attribute_values;

  // The attribute called name, or nullptr.
  const RObject* attribute(std::string_view name) const;
  // For a list with a "names" attribute (or a tagged pairlist): the element called name.
  const RObject* element(std::string_view name) const;
};

// Parses one serialised object ("X\n" XDR format); source names the data in error messages.
RObject r_unserialize(std::string_view bytes, const std::string& source);

// Inflates a zlib (gzip = false) or gzip stream; expected_size, when non-zero, must match.
std::string inflate_bytes(std::string_view compressed, bool gzip, size_t expected_size, const std::string& source);

struct RdbEntry {
  std::string name;
  int64_t offset = 0, length = 0;  // byte range in the .rdb
};

// Index of a lazy-load database: every object's name and byte range, in the .rdx's order.
std::vector<RdbEntry> read_rdx_index(const std::string& rdx_path);

// The object `name` of the database rdb_path (its index is rdb_path with .rdb -> .rdx).
RObject read_rdb_object(const std::string& rdb_path, const std::string& name);

// A character vector object as its strings; NA elements are an error.
std::vector<std::string> read_rdb_character_vector(const std::string& rdb_path, const std::string& name);

}  // namespace trident::data
