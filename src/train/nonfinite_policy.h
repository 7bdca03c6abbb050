// What a run does after a poisoned step: one whose loss or gradient norm was NaN or inf on
// some rank. The engine has already skipped that step's update on every rank (weights, AdamW
// moments and its step counter are unchanged, see parallel::StepStats::skipped); this policy
// decides whether the run goes on (--on-nonfinite skip, at most --max-bad-steps such steps in
// a row) or stops (--on-nonfinite stop). A skipped step still counts as a step for the data
// order (a function of the step), but not for the LR schedule, which is a function of the
// updates applied: as in Megatron-LM, whose train_step advances its scheduler only when the
// update succeeded. With --precision fp16 a step whose scaled gradients overflowed while the
// loss stayed finite is the loss scaler's business (StepStats::overflow): it is noted, not
// counted as poisoned.
// Every rank sees the same StepStats, so every rank takes the same decision.
#pragma once

#include <cstdint>
#include <string>

#include "parallel/engine.h"
#include "train/run_config.h"

namespace trident::train {

class NonfiniteGuard {
 public:
  NonfiniteGuard(NonfinitePolicy policy, int max_bad_steps)
      : policy_(policy), max_bad_steps_(max_bad_steps) {}

  // After each step (`step` is 1-based: the step just taken). Returns the line to print for a
  // skipped step, empty for a good one; throws trident::Error when the run must stop.
  std::string record(int64_t step, const parallel::StepStats& stats);

  int consecutive_bad() const { return consecutive_; }
  int64_t total_skipped() const { return total_; }
  int64_t total_overflows() const { return overflows_; }

 private:
  NonfinitePolicy policy_;
  int max_bad_steps_;
  int consecutive_ = 0;
  int64_t total_ = 0;
  int64_t overflows_ = 0;
};

}  // namespace trident::train
