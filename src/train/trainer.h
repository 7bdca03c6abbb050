// The training loop of `trident train`: data, the engine's steps, evaluation, metrics (JSON
// lines), progress, checkpoints and resume. Runs on every rank; rank 0 writes files and
// prints.
#pragma once

#include "comm/mesh.h"
#include "train/run_config.h"

namespace trident::train {

// Trains as `cfg` says on the ranks of `mesh` (dp x tp x pp from cfg.parallel). With
// train.resume set, `cfg` is the checkpoint's run configuration (train/resume_config.h). Returns the
// process exit code: 0, or kExitPreempted / kExitPreemptedUnsaved (train/preemption.h) when a
// stop signal ended the run early.
int run_training(const RunConfig& cfg, comm::Mesh& mesh);

}  // namespace trident::train
