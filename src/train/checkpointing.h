// Saving and restoring a training run through the layout-free checkpoint format: every rank
// takes part in gathering each logical tensor, one at a time in the order world rank 0's
// writer streams them to the files (committed atomically), so rank 0 holds at most one
// logical tensor (the largest is the tied embedding) beyond its own shards. If rank 0's write fails part way,
// it still joins the remaining gathers, and then every rank learns the outcome. On load every
// rank reads the files and keeps its own slice, so a checkpoint from any layout loads into
// any other.
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
