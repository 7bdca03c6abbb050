#include "core/crc32c.h"

#include <array>
#include <cstring>

#include <fmt/format.h>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace trident {
namespace {

constexpr std::uint32_t kPolynomial = 0x82F63B78u;  // Castagnoli, bit-reversed

constexpr std::array<std::uint32_t, 256> make_table() {
  std::array<std::uint32_t, 256> t{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ kPolynomial : c >> 1;
    t[i] = c;
  }
  return t;
}
constexpr std::array<std::uint32_t, 256> kTable = make_table();

std::uint32_t update_table(std::uint32_t c, const unsigned char* p, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) c = kTable[(c ^ p[i]) & 0xFFu] ^ (c >> 8);
  return c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) std::uint32_t update_sse42(std::uint32_t c, const unsigned char* p, std::size_t n) {
  std::uint64_t c64 = c;
  for (; n >= 8; n -= 8, p += 8) {
    std::uint64_t word;
    std::memcpy(&word, p, 8);
    c64 = _mm_crc32_u64(c64, word);
  }
  c = static_cast<std::uint32_t>(c64);
  for (; n > 0; --n, ++p) c = _mm_crc32_u8(c, *p);
  return c;
}
#endif

// a(x) * b(x) modulo the polynomial, both bit-reversed (x^0 is the top bit), as zlib's multmodp.
std::uint32_t multiply_mod(std::uint32_t a, std::uint32_t b) {
  std::uint32_t m = 1u << 31, p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) == 0) break;
    }
    m >>= 1;
    b = (b & 1u) ? (b >> 1) ^ kPolynomial : b >> 1;
  }
  return p;
}

// x^(2^k) modulo the polynomial, k = 0..31 (beyond, the powers cycle with the multiplicative order).
std::array<std::uint32_t, 32> make_powers() {
  std::array<std::uint32_t, 32> t{};
  std::uint32_t p = 1u << 30;  // x^1
  t[0] = p;
  for (std::size_t k = 1; k < t.size(); ++k) t[k] = p = multiply_mod(p, p);
  return t;
}

}  // namespace

std::uint32_t crc32c_combine(std::uint32_t crc_a, std::uint32_t crc_b, std::uint64_t len_b) {
  static const std::array<std::uint32_t, 32> powers = make_powers();
  // x^(8 len_b): crc_a shifted past len_b bytes of zeros, then b's own CRC on top.
  std::uint32_t shift = 1u << 31;  // x^0
  unsigned k = 3;                  // 8 = 2^3 bits a byte
  for (std::uint64_t n = len_b; n != 0; n >>= 1, ++k) {
    if (n & 1u) shift = multiply_mod(powers[k & 31u], shift);
  }
  return multiply_mod(shift, crc_a) ^ crc_b;
}

std::uint32_t crc32c_update(std::uint32_t crc, const void* data, std::size_t bytes) {
  const auto* p = static_cast<const unsigned char*>(data);
  std::uint32_t c = ~crc;
#if defined(__x86_64__)
  if (__builtin_cpu_supports("sse4.2")) return ~update_sse42(c, p, bytes);
#endif
  return ~update_table(c, p, bytes);
}

std::uint32_t crc32c_update_portable(std::uint32_t crc, const void* data, std::size_t bytes) {
  return ~update_table(~crc, static_cast<const unsigned char*>(data), bytes);
}

std::string crc32c_string(std::uint32_t crc) { return fmt::format("crc32c:{:08x}", crc); }

}  // namespace trident
