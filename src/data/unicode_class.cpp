// Character classification for the pre-tokenizer: an ASCII table, then binary search in the
// generated range tables for everything else.
#include "data/unicode_class.h"

#include <algorithm>
#include <array>

namespace trident::data {
namespace {

bool in_ranges(const detail::CodePointRange* ranges, size_t count, uint32_t cp) {
  const auto* end = ranges + count;
  // First range whose hi >= cp.
  const auto* it = std::lower_bound(ranges, end, cp,
                                    [](const detail::CodePointRange& r, uint32_t v) { return r.hi < v; });
  return it != end && it->lo <= cp;
}

CharClass classify_slow(uint32_t cp) {
  if (cp == kInvalidCodePoint) return CharClass::kOther;
  if (in_ranges(detail::kLetterRanges, detail::kLetterRangesCount, cp)) return CharClass::kLetter;
  if (in_ranges(detail::kNumberRanges, detail::kNumberRangesCount, cp)) return CharClass::kNumber;
  if (in_ranges(detail::kSpaceRanges, detail::kSpaceRangesCount, cp)) return CharClass::kSpace;
  return CharClass::kOther;
}

// Classes of U+0000..U+07FF (Latin, Greek, Cyrillic, Hebrew, Arabic...), computed once.
constexpr uint32_t kTableSize = 0x800;
const std::array<CharClass, kTableSize>& low_table() {
  static const auto table = [] {
    std::array<CharClass, kTableSize> t{};
    for (uint32_t cp = 0; cp < kTableSize; ++cp) t[cp] = classify_slow(cp);
    return t;
  }();
  return table;
}

}  // namespace

CharClass char_class(uint32_t cp) {
  if (cp < kTableSize) return low_table()[cp];
  return classify_slow(cp);
}

}  // namespace trident::data
