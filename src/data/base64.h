// Standard base64 (RFC 4648, with '=' padding) decoding, for vocabularies that store token
// bytes that way (tiktoken's rank files).
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace trident::data {

// The decoded bytes, or nullopt when `text` is not valid padded base64.
std::optional<std::string> base64_decode(std::string_view text);

}  // namespace trident::data
