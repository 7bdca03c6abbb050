// Hand-written matcher for cl100k_base's pre-tokenisation regex; see pretokenizer_cl100k.h.
// Each block below is one alternative of the regex, tried in its order (leftmost wins).
#include "data/pretokenizer_cl100k.h"

#include "data/unicode_class.h"

namespace trident::data {
namespace {

inline bool is_newline(char c) { return c == '\r' || c == '\n'; }
inline char ascii_lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

}  // namespace

size_t cl100k_pretoken_end(std::string_view text, size_t pos) {
  const size_t n = text.size();
  const char c = text[pos];
  // (?i:'s|'t|'re|'ve|'m|'ll|'d)
  if (c == '\'' && pos + 1 < n) {
    const char c1 = ascii_lower(text[pos + 1]);
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return pos + 2;
    if (pos + 2 < n) {
      const char c2 = ascii_lower(text[pos + 2]);
      if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return pos + 3;
    }
  }
  const ClassedChar first = classed_char_at(text, pos);
  // [^\r\n\p{L}\p{N}]?\p{L}+ : letters, optionally led by one character that is neither a
  // letter, a number nor a line break (a space, a tab, punctuation).
  if (first.cls == CharClass::kLetter) return class_run_end(text, pos + first.len, CharClass::kLetter);
  if (first.cls != CharClass::kNumber && !is_newline(c) && pos + first.len < n &&
      classed_char_at(text, pos + first.len).cls == CharClass::kLetter) {
    return class_run_end(text, pos + first.len, CharClass::kLetter);
  }
  // \p{N}{1,3}
  if (first.cls == CharClass::kNumber) {
    size_t end = pos + first.len;
    for (int k = 1; k < 3 && end < n; ++k) {
      const ClassedChar ch = classed_char_at(text, end);
      if (ch.cls != CharClass::kNumber) break;
      end += ch.len;
    }
    return end;
  }
  //  ?[^\s\p{L}\p{N}]+[\r\n]*
  size_t start = pos;
  if (c == ' ' && pos + 1 < n && classed_char_at(text, pos + 1).cls == CharClass::kOther) start = pos + 1;
  if (classed_char_at(text, start).cls == CharClass::kOther) {
    size_t end = class_run_end(text, start, CharClass::kOther);
    while (end < n && is_newline(text[end])) ++end;
    return end;
  }
  // Only white space is left. \s*[\r\n]+ : the run up to and including its last line break.
  size_t end = pos, last_start = pos, last_newline = n;
  int count = 0;
  while (end < n) {
    const ClassedChar ch = classed_char_at(text, end);
    if (ch.cls != CharClass::kSpace) break;
    if (is_newline(text[end])) last_newline = end;
    last_start = end;
    end += ch.len;
    ++count;
  }
  if (last_newline != n) return last_newline + 1;
  // \s+(?!\S) | \s+ : a run followed by a non-space gives its last character to the next piece.
  if (end == n || count == 1) return end;
  return last_start;
}

}  // namespace trident::data
