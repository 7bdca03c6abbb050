// GPT-2's reversible byte <-> unicode mapping: encoder.json and vocab.bpe spell every token as
// a string of printable code points, one per byte (bytes that are printable Latin-1 map to
// themselves, the others to U+0100 upwards). Trident keeps tokens as raw bytes and uses this
// mapping only when reading those files.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace trident::data {

// byte -> code point, as GPT-2's bytes_to_unicode().
const std::array<uint32_t, 256>& byte_to_unicode();

// Converts a token spelled in the mapped alphabet (UTF-8) back to its raw bytes; nullopt when
// the text is not valid UTF-8 or uses a code point outside the mapping.
std::optional<std::string> unicode_token_to_bytes(std::string_view token);

// The inverse: raw bytes -> the mapped spelling (UTF-8), as it appears in encoder.json.
std::string bytes_to_unicode_token(std::string_view bytes);

}  // namespace trident::data
