// Saving and restoring a training run through the layout-free checkpoint format: every rank
// takes part in gathering each logical tensor, one at a time in the order world rank 0's
// writer streams them to the files (committed atomically), so rank 0 holds at most one
// logical tensor (the largest is the tied embedding) beyond its own shards. If rank 0's write fails part way,
// it still joins the remaining gathers, and then every rank learns the outcome. On load every
// rank reads the files and keeps its own slice, so a checkpoint from any layout loads into
// any other. For --async-ckpt, the same gathers fill a host snapshot on rank 0 instead, which
// rank 0 then writes (through the same staging directory, rename and `latest`) on its own.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "ckpt/checkpoint.h"
#include "core/memory.h"
#include "parallel/engine.h"

namespace trident::train {

// Collective. Returns the step directory written (on every rank).
std::string save_checkpoint(parallel::Engine& engine, const std::string& root, int64_t step,
                            const nlohmann::json& trident_state);

// A checkpoint's contents copied out of the engine at a step boundary, so rank 0 can write
// them while training goes on. On rank 0 `values` holds every logical parameter and both AdamW
// moments in fp32 (3 x the model's logical parameter count x 4 bytes, accounted as
// ckpt_snapshot); on the other ranks it stays empty.
struct CheckpointSnapshot {
  nn::ModelConfig config;
  int64_t step = -1;
  int64_t optimizer_step = 0;
  nlohmann::json trident_state;
  FloatBuffer values;  // rank 0: parameters, then each parameter's exp_avg and exp_avg_sq
  std::vector<float> router_bias;  // rank 0: the aux-free bias table (nn::Model::router_bias)
};

// How many floats rank 0's snapshot holds for a model `c`: the parameters take_snapshot gathers
// (a QLoRA run's base none: its files are copied from the quantized checkpoint) and both AdamW
// moments of every trained element (a LoRA run's adapters only), so 4 x this is its
// ckpt_snapshot bytes; computed without listing the tensors (train's memory check prices
// --async-ckpt with it before anything is built). take_snapshot checks it allocates exactly this.
int64_t snapshot_floats(const nn::ModelConfig& c);

// Collective, at a step boundary. Refuses non-finite state exactly as save_checkpoint does
// (every rank, before anything is copied), then gathers the whole checkpoint into `snapshot`
// (allocated from the engine's tracker the first time, reused after: its previous contents
// must no longer be in use).
void take_snapshot(parallel::Engine& engine, const std::string& root, int64_t step,
                   const nlohmann::json& trident_state, CheckpointSnapshot& snapshot);

// Rank 0 only; not collective, touches no engine state, so it may run on another thread.
// Checks every value of the snapshot is finite (throwing before anything is staged), then
// writes and commits it under `root` like save_checkpoint. Returns the step directory.
std::string write_snapshot(const CheckpointSnapshot& snapshot, const std::string& root);

// Loads model weights (and, with `with_optimizer`, AdamW state and its step) from a loaded
// checkpoint (a step directory, a run directory's latest, or a Hugging Face GPT-2 directory)
// into the engine. The checkpoint's model shape must equal the engine's; a clear error
// otherwise. Returns the checkpoint's step (0 for a Hugging Face directory).
int64_t load_into_engine(parallel::Engine& engine, const ckpt::LoadedCheckpoint& loaded,
                         bool with_optimizer);

}  // namespace trident::train
