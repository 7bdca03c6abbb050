// Saving and restoring a training run through the layout-free checkpoint format: every rank
// takes part in gathering each logical tensor (one at a time, so the model is never held
// twice), world rank 0 writes the files atomically; on load every rank reads the files and
// keeps its own slice, so a checkpoint from any layout loads into any other.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "ckpt/checkpoint.h"
#include "parallel/engine.h"

namespace trident::train {

// Collective. Returns the step directory written (on every rank).
std::string save_checkpoint(parallel::Engine& engine, const std::string& root, int64_t step,
                            const nlohmann::json& trident_state);

// Loads model weights (and, with `with_optimizer`, AdamW state and its step) from a loaded
// checkpoint (a step directory, a run directory's latest, or a Hugging Face GPT-2 directory)
// into the engine. The checkpoint's model shape must equal the engine's; a clear error
// otherwise. Returns the checkpoint's step (0 for a Hugging Face directory).
int64_t load_into_engine(parallel::Engine& engine, const ckpt::LoadedCheckpoint& loaded,
                         bool with_optimizer);

}  // namespace trident::train
