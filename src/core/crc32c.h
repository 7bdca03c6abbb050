// CRC-32C (Castagnoli), the checksum checkpoints record for each of their files (ckpt/checksums.h):
// SSE4.2's crc32 instruction where the CPU has it (chosen at run time), a table otherwise; both
// give the same value. Not a cryptographic hash: it catches disk, copy and transfer corruption
// (every burst of up to 32 flipped bits, and all but 2^-32 of the rest), not tampering.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace trident {

// The CRC of `bytes` appended to data whose CRC was `crc` (0 for none): crc32c(a + b) ==
// crc32c_update(crc32c_update(0, a), b). crc32c_update(0, "123456789", 9) == 0xE3069283.
std::uint32_t crc32c_update(std::uint32_t crc, const void* data, std::size_t bytes);
// The table code alone, which the SSE4.2 path must equal (for tests and CPUs without SSE4.2).
std::uint32_t crc32c_update_portable(std::uint32_t crc, const void* data, std::size_t bytes);

// The CRC of a + b from crc32c(a), crc32c(b) and b's length, without the bytes (zlib's
// crc32_combine, by multiplication modulo the polynomial: O(log len_b)): so pieces of a file
// checksummed in any order can be joined in file order.
std::uint32_t crc32c_combine(std::uint32_t crc_a, std::uint32_t crc_b, std::uint64_t len_b);

// "crc32c:" and 8 lower-case hex digits, as checkpoints record it.
std::string crc32c_string(std::uint32_t crc);

}  // namespace trident
