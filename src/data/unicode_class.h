// UTF-8 decoding and the character classes GPT-2's pre-tokenizer distinguishes (letters,
// numbers, white space, everything else). The range tables live in unicode_tables.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace trident::data {

enum class CharClass : uint8_t { kLetter, kNumber, kSpace, kOther };

// Marks a byte that does not start a valid UTF-8 sequence; it is classed as kOther (as U+FFFD
// would be) and always forms a character of length 1, so any byte string round-trips.
inline constexpr uint32_t kInvalidCodePoint = 0xFFFFFFFFu;

struct Utf8Char {
  uint32_t cp;   // code point, or kInvalidCodePoint
  uint32_t len;  // bytes consumed, >= 1
};

// Decodes the character at s[pos] (pos < s.size()). Rejects overlong forms, surrogates,
// code points above U+10FFFF and truncated sequences.
inline Utf8Char decode_utf8(std::string_view s, size_t pos) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + pos;
  const size_t left = s.size() - pos;
  const unsigned c0 = p[0];
  if (c0 < 0x80) return {c0, 1};
  auto cont = [&](size_t i) { return i < left && (p[i] & 0xC0) == 0x80; };
  if (c0 >= 0xC2 && c0 <= 0xDF) {
    if (cont(1)) return {((c0 & 0x1Fu) << 6) | (p[1] & 0x3Fu), 2};
  } else if (c0 >= 0xE0 && c0 <= 0xEF) {
    if (cont(1) && cont(2)) {
      const uint32_t cp = ((c0 & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu);
      if (cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF)) return {cp, 3};
    }
  } else if (c0 >= 0xF0 && c0 <= 0xF4) {
    if (cont(1) && cont(2) && cont(3)) {
      const uint32_t cp = ((c0 & 0x07u) << 18) | ((p[1] & 0x3Fu) << 12) |
                          ((p[2] & 0x3Fu) << 6) | (p[3] & 0x3Fu);
      if (cp >= 0x10000 && cp <= 0x10FFFF) return {cp, 4};
    }
  }
  return {kInvalidCodePoint, 1};
}

// Class of a code point: General_Category L*, N*, the White_Space property, or other.
CharClass char_class(uint32_t cp);

// One character of UTF-8 text with its class: what the pre-tokenizers step through.
struct ClassedChar {
  CharClass cls;
  uint32_t len;  // bytes
};

inline ClassedChar classed_char_at(std::string_view text, size_t pos) {
  const auto c = static_cast<unsigned char>(text[pos]);
  if (c < 0x80) return {char_class(c), 1};  // ASCII fast path, no decoding needed
  const Utf8Char u = decode_utf8(text, pos);
  return {char_class(u.cp), u.len};
}

// End of the maximal run of characters of class cls starting at pos.
inline size_t class_run_end(std::string_view text, size_t pos, CharClass cls) {
  while (pos < text.size()) {
    const ClassedChar ch = classed_char_at(text, pos);
    if (ch.cls != cls) break;
    pos += ch.len;
  }
  return pos;
}

namespace detail {
struct CodePointRange {
  uint32_t lo, hi;  // inclusive
};
extern const CodePointRange kLetterRanges[];
extern const size_t kLetterRangesCount;
extern const CodePointRange kNumberRanges[];
extern const size_t kNumberRangesCount;
extern const CodePointRange kSpaceRanges[];
extern const size_t kSpaceRangesCount;
}  // namespace detail

}  // namespace trident::data
