// --async-ckpt: a checkpoint is snapshotted at the step boundary (collectively: every rank takes
// part in the gathers, the whole logical model and both AdamW moments land in rank 0's host
// memory) and rank 0 writes the snapshot on a background thread while training goes on. The
// write itself is save_checkpoint's (staging directory, rename, `latest`), so a checkpoint is
// still all or nothing.
//
// At most one write is in flight: the next checkpoint first waits for the previous one, so the
// snapshot buffer is reused and its memory stays at one checkpoint's worth. Whether the write
// finished is agreed on over the world (one tiny allreduce per step while a write is in flight),
// so a failed write stops every rank at the same step with rank 0's error. The background
// thread makes no MPI calls and touches no engine state.
#pragma once

#include <atomic>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>

#include "parallel/engine.h"
#include "train/checkpointing.h"

namespace trident::train {

class AsyncCheckpointer {
 public:
  AsyncCheckpointer(parallel::Engine& engine, std::string root);
  // Waits for a write in flight (its outcome is then lost; the checkpoint is complete or absent).
  ~AsyncCheckpointer();
  AsyncCheckpointer(const AsyncCheckpointer&) = delete;
  AsyncCheckpointer& operator=(const AsyncCheckpointer&) = delete;

  // Collective. Waits for the write in flight (as finish()), then snapshots step `step` and
  // starts writing it on rank 0. Returns what finish() returned.
  std::optional<std::string> start(int64_t step, const nlohmann::json& trident_state);
  // Collective; cheap. When the write in flight has finished on rank 0, returns its step
  // directory (on every rank); nullopt while it runs or when none is in flight. A failed write
  // throws trident::Error on every rank (rank 0's says why).
  std::optional<std::string> poll() { return settle(/*wait=*/false); }
  // Collective. Waits for the write in flight; otherwise as poll().
  std::optional<std::string> finish() { return settle(/*wait=*/true); }

  bool in_flight() const { return in_flight_; }
  int64_t in_flight_step() const { return snapshot_.step; }
  // Seconds the last start() spent on the snapshot (the gathers), i.e. what the step paid.
  double last_snapshot_seconds() const { return snapshot_seconds_; }

 private:
  std::optional<std::string> settle(bool wait);

  parallel::Engine& engine_;
  std::string root_;
  bool writer_rank_;
  CheckpointSnapshot snapshot_;
  bool in_flight_ = false;  // the same on every rank
  double snapshot_seconds_ = 0.0;
  // Rank 0's writer and what it reports (read after `finished_` is seen true).
  std::thread writer_;
  std::atomic<bool> finished_{false};
  std::string error_;
};

}  // namespace trident::train
