// SHA-256 (FIPS 180-4), used to pin extracted corpora; no external crypto library needed.
#pragma once

#include <string>
#include <string_view>

namespace trident::data {

// Lower-case hex digest of data.
std::string sha256_hex(std::string_view data);

}  // namespace trident::data
