// The fp16 loss scaler's state in a checkpoint's trident.json ("loss_scaler": scale, growth
// and hysteresis trackers), so a resumed fp16 run continues with the scale it would have had.
// A run in another precision writes none and ignores one it finds (it has no scaler); an fp16
// run resumed from a checkpoint without one starts at --initial-loss-scale.
#pragma once

#include <nlohmann/json.hpp>

#include "ckpt/checkpoint.h"
#include "parallel/engine.h"

namespace trident::train {

// Adds "loss_scaler" to a trident.json run state when the engine has a scaler.
void add_loss_scaler_state(const parallel::Engine& engine, nlohmann::json& run_state);

// Restores it from `loaded` into an fp16 engine; throws trident::Error naming the file and
// field when it is malformed or not a state the configured scaler can reach. Returns whether
// a state was restored.
bool restore_loss_scaler_state(parallel::Engine& engine, const ckpt::LoadedCheckpoint& loaded);

}  // namespace trident::train
