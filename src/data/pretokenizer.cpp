// Hand-written matcher for GPT-2's pre-tokenisation regex; see pretokenizer.h.
#include "data/pretokenizer.h"

#include "data/unicode_class.h"

namespace trident::data {

size_t pretoken_end(std::string_view text, size_t pos) {
  const size_t n = text.size();
  const char c = text[pos];
  // 's|'t|'re|'ve|'m|'ll|'d  (lower case only, as in GPT-2)
  if (c == '\'' && pos + 1 < n) {
    const char c1 = text[pos + 1];
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return pos + 2;
    if (pos + 2 < n) {
      const char c2 = text[pos + 2];
      if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) {
        return pos + 3;
      }
    }
  }
  //  ?\p{L}+ |  ?\p{N}+ |  ?[^\s\p{L}\p{N}]+  with the optional leading space
  if (c == ' ' && pos + 1 < n) {
    const ClassedChar next = classed_char_at(text, pos + 1);
    if (next.cls != CharClass::kSpace) return class_run_end(text, pos + 1 + next.len, next.cls);
  }
  const ClassedChar first = classed_char_at(text, pos);
  if (first.cls != CharClass::kSpace) return class_run_end(text, pos + first.len, first.cls);
  // \s+(?!\S) | \s+ : a white-space run stops before its last character when a non-space
  // follows, so that character can lead the next piece (" word"); a run of one stays whole.
  size_t end = pos, last_start = pos;
  int count = 0;
  while (end < n) {
    const ClassedChar ch = classed_char_at(text, end);
    if (ch.cls != CharClass::kSpace) break;
    last_start = end;
    end += ch.len;
    ++count;
  }
  if (end == n || count == 1) return end;
  return last_start;
}

std::vector<std::string_view> pretokenize(std::string_view text) {
  std::vector<std::string_view> pieces;
  for (size_t pos = 0; pos < text.size();) {
    const size_t end = pretoken_end(text, pos);
    pieces.push_back(text.substr(pos, end - pos));
    pos = end;
  }
  return pieces;
}

}  // namespace trident::data
