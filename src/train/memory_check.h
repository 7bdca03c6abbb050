// Refusing, before anything is allocated, a model this machine cannot hold. First a bound that
// needs no construction at all (weights, gradients and both AdamW moments are 16 bytes per
// parameter, at best split over every rank: 16 Psi / world; 8 Psi / world with the moments
// offloaded to disk), so a config.json with n_layer 1e9
// fails in microseconds instead of allocating until bad_alloc; then trident plan's memory
// model (plan/memory_model.h, the same numbers `trident plan` prints) for this exact layout,
// summed over the ranks that share this node, against the memory the node has available
// (/proc/meminfo MemAvailable, and the cgroup's limit when one is set).
// TRIDENT_MEMORY_CHECK=0 skips the check (e.g. on a machine that swaps on purpose).
#pragma once

#include <cstdint>
#include <optional>

#include "comm/mesh.h"
#include "nn/model_config.h"
#include "train/run_config.h"

namespace trident::train {

// Bytes this process could still allocate: MemAvailable, lowered to what the cgroup (v2 or
// v1) still allows; nullopt when neither can be read.
std::optional<double> available_memory_bytes();

// Collective over the world. Throws trident::Error naming the estimate (per rank, by category,
// and for the node) and what is available, with what to change.
void check_model_fits(const nn::ModelConfig& model, const RunConfig& cfg, comm::Mesh& mesh);

// The construction-free lower bound: floor_bytes_per_param per parameter over `world` ranks
// (the parameter count in checked 64-bit arithmetic).
// 16 bytes (weights, gradients, two moments); 8 with the moments offloaded, 6 when the weights
// are also 16-bit (`low_precision`: bf16/fp16, whose ZeRO-1/2 fp32 master then joins the moments
// on disk, leaving the 16-bit copy and the gradients), 4 with the weights offloaded too
// (optimizer+params); 2 fewer each with 16-bit gradients (`grad16`, --grad-dtype); LoRA 4 at most
// (moments for the adapters only); QLoRA 0.5 (a q4-packed base's least).
double floor_bytes_per_param(const nn::ModelConfig& model, bool offload_optimizer, bool offload_params,
                             bool low_precision = false, bool grad16 = false);
double lower_bound_bytes_per_rank(const nn::ModelConfig& model, int world, bool offload_optimizer = false,
                                  bool offload_params = false, bool low_precision = false, bool grad16 = false);

}  // namespace trident::train
