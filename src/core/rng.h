// Counter-based random numbers (Philox4x32-10, Salmon et al. 2011): a value depends only on
// (seed, stream, index), never on call order, so every rank and every layout can compute any
// element of any logical tensor independently and get the same bits.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

namespace trident {

// Philox4x32 with 10 rounds: 128-bit counter, 64-bit key -> 4 x 32 random bits.
std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key);

// 64-bit FNV-1a hash, used to turn a parameter name into a stream id.
uint64_t fnv1a64(std::string_view text);

// Uniform in (0, 1], from the counter (index, stream) under key seed.
float uniform_at(uint64_t seed, uint64_t stream, uint64_t index);

// Standard normal via Box-Muller on two uniforms of the same counter.
float normal_at(uint64_t seed, uint64_t stream, uint64_t index);

}  // namespace trident
