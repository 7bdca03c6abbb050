// GPT-2's byte <-> unicode table; see byte_unicode.h.
#include "data/byte_unicode.h"

#include "data/unicode_class.h"

namespace trident::data {
namespace {

// code point -> byte, or -1; the mapped alphabet lies below U+0144.
constexpr uint32_t kMaxMapped = 0x200;
const std::array<int, kMaxMapped>& unicode_to_byte() {
  static const auto table = [] {
    std::array<int, kMaxMapped> t;
    t.fill(-1);
    const auto& fwd = byte_to_unicode();
    for (int b = 0; b < 256; ++b) t[fwd[b]] = b;
    return t;
  }();
  return table;
}

void append_utf8(std::string* out, uint32_t cp) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else {  // the mapped alphabet needs at most two bytes
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

}  // namespace

const std::array<uint32_t, 256>& byte_to_unicode() {
  static const auto table = [] {
    std::array<uint32_t, 256> t{};
    std::array<bool, 256> printable{};
    for (int b = '!'; b <= '~'; ++b) printable[b] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) printable[b] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) printable[b] = true;
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) t[b] = printable[b] ? static_cast<uint32_t>(b) : next++;
    return t;
  }();
  return table;
}

std::optional<std::string> unicode_token_to_bytes(std::string_view token) {
  const auto& inv = unicode_to_byte();
  std::string out;
  out.reserve(token.size());
  for (size_t pos = 0; pos < token.size();) {
    const Utf8Char ch = decode_utf8(token, pos);
    if (ch.cp == kInvalidCodePoint || ch.cp >= kMaxMapped || inv[ch.cp] < 0) return std::nullopt;
    out.push_back(static_cast<char>(inv[ch.cp]));
    pos += ch.len;
  }
  return out;
}

std::string bytes_to_unicode_token(std::string_view bytes) {
  const auto& fwd = byte_to_unicode();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) append_utf8(&out, fwd[b]);
  return out;
}

}  // namespace trident::data
