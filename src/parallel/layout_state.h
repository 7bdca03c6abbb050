// Layout-free state of a RankLayout: logical (unsharded) tensors by Hugging Face name, moved
// between the world and this rank's slices -- tp splits, pp stages, ZeRO shards, the tied
// parameter on two stages -- whatever the layout. Used by checkpointing (ckpt/, train/
// checkpointing.cpp) and the equivalence tests; the file formats are left to them.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "parallel/rank_layout.h"

namespace trident::parallel {

// Initialises every parameter from its logical tensor (the counter-based RNG keyed by seed,
// name and element: every layout starts from the same weights); ZeRO-3 ranks only their shard.
void initialize_params(RankLayout& layout, uint64_t seed);

// Collective over the world: every rank calls with the same names in the same order; the full
// logical tensor arrives on world rank 0 (others' `out` is untouched, may be null).
void gather_param(RankLayout& layout, const std::string& name, const Shape& logical_shape, float* out);
// kind 0: exp_avg, 1: exp_avg_sq
void gather_optimizer_state(RankLayout& layout, const std::string& name, const Shape& logical_shape,
                            int kind, float* out);
// Every rank passes the full logical tensor and keeps its slice (in every chunk that holds the
// parameter: a tied one lives on the first and the last stage). Not collective.
void load_param(RankLayout& layout, const std::string& name, const float* logical);
void load_optimizer_state(RankLayout& layout, const std::string& name, int kind, const float* logical);
// Reads elements [begin, begin + count) of one logical tensor, row-major, into dst.
using LogicalReader = std::function<void(int64_t begin, int64_t count, float* dst)>;
// The same loads, with every rank reading only the logical elements it keeps: its tp / ep slice,
// and of that its ZeRO shard's part (the values under ZeRO-3, the moments under ZeRO >= 1), in
// pieces of at most kLoadChunk elements straight into the flat buffer, the shard or the offload
// file. So a rank's load holds one piece, never the tensor, and reads 1/dp of a sharded tensor.
// Bitwise what load_param / load_optimizer_state keep from the whole tensor (padding zero).
// Not collective; `read` may be called any number of times, in any order. `piece`: the most
// elements one piece holds (tests take small odd ones, to cross runs and offload blocks).
inline constexpr int64_t kLoadChunk = int64_t{1} << 20;  // 4 MiB of fp32
void load_param_from(RankLayout& layout, const std::string& name, const LogicalReader& read,
                     int64_t piece = kLoadChunk);
void load_optimizer_state_from(RankLayout& layout, const std::string& name, int kind, const LogicalReader& read,
                               int64_t piece = kLoadChunk);
// QLoRA: every rank passes the whole packed matrix of a packed base parameter and keeps its
// slice (quant/packed_base.h); then check_packed_base once, after the last.
void load_packed_param(RankLayout& layout, const nn::ParamDecl& decl, const quant::QuantMatrix& full);
void check_packed_base(const RankLayout& layout);
int64_t optimizer_step(const RankLayout& layout);
void set_optimizer_step(RankLayout& layout, int64_t t);
// Collective over the world: every rank scans the weights and AdamW moments it holds (its
// shards under ZeRO) for NaN/inf. Returns, on every rank alike, the first offender of the
// lowest such rank ("h.3.mlp.c_fc.weight exp_avg_sq, element 17, on rank 2"), or "" when all
// are finite.
std::string find_nonfinite_state(RankLayout& layout);

}  // namespace trident::parallel
