// The sizes of the mixture-of-experts token exchange under expert parallelism (nn/moe_mlp.h),
// stated once: the layer allocates its exchange buffers by them and the planner (plan/) prices
// and counts them. Kept out of moe_mlp.h so that the planner's use of two numbers does not
// rebuild every file that includes the layer.
#pragma once

#include <cstdint>

#include "nn/model_config.h"

namespace trident::kernels {
enum class Precision;  // kernels/matmul_engine.h
}  // namespace trident::kernels

namespace trident::nn {

// Floats one all_to_allv of a MoE layer moves out of a rank for N of its tokens: its k routed
// rows per token, n_embd wide (the 1/ep of them bound for its own experts included; they are
// copied, not sent). Forward sends the inputs and gets the outputs back, backward sends the
// output gradients and gets the input gradients back: four such exchanges per layer per
// micro-batch, plus one all_to_all of the E row counts in forward.
int64_t moe_exchange_floats(const ModelConfig& cfg, int64_t N);

// Bytes a MoE layer's activations add at ep > 1 for N tokens (MoeActivations' receive buffer
// `ex` and owner-side outputs `yo` in fp32, its received inputs `xo` as saved operands:
// 16-bit words when `storage` is bf16/fp16), under balanced routing: every owner then
// receives as many rows as it sends (Ro = R), so each buffer is one exchange's rows. Routing
// imbalance makes the owner of a popular expert hold more (h1/h3/act and xo grow to its Ro
// rows); 0 at ep 1.
int64_t moe_exchange_buffer_bytes(const ModelConfig& cfg, int ep, int64_t N, kernels::Precision storage);

}  // namespace trident::nn
