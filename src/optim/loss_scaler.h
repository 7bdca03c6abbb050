// Dynamic loss scaling for fp16 training, with Megatron-LM's state machine
// (megatron/core/optimizer/grad_scaler.py, DynamicGradScaler): the loss is multiplied by
// scale() before backward so that small fp16 gradients do not flush to zero; a step whose
// gradients hold inf/NaN anywhere in the world is skipped and counts against the hysteresis
// budget, and only when that budget is spent is the scale multiplied by the backoff factor
// (never below the minimum). After `growth_interval` clean steps in a row the scale is
// multiplied by the growth factor and the hysteresis budget is refilled. As in Megatron, a
// clean step does not refill the budget by itself: only a growth does.
//
// The scaler holds no rank-local decision: every rank calls update() with the same
// world-reduced `found_nonfinite`, so every rank keeps the same scale.
#pragma once

#include <cstdint>

namespace trident::optim {

struct LossScalerConfig {
  double initial_scale = 4294967296.0;  // 2^32, Megatron's default --initial-loss-scale
  double min_scale = 1.0;
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 1000;  // --loss-scale-window
  int hysteresis = 2;
};

// The part of the scaler a checkpoint must carry for a resumed run to continue identically.
struct LossScalerState {
  double scale = 0.0;
  int64_t growth_tracker = 0;
  int hysteresis_tracker = 0;
};

class LossScaler {
 public:
  // Throws trident::Error naming the bad field when the config cannot describe a scaler.
  explicit LossScaler(const LossScalerConfig& config);

  double scale() const { return state_.scale; }
  double inverse_scale() const { return 1.0 / state_.scale; }

  // After each step's gradients are known: `found_nonfinite` is true when any gradient on any
  // rank was inf or NaN (that step's update is skipped by the caller).
  void update(bool found_nonfinite);

  const LossScalerState& state() const { return state_; }
  // Restores a checkpointed state; throws trident::Error when it is not one this config can
  // reach (a scale below the minimum, negative trackers).
  void restore(const LossScalerState& state);

 private:
  LossScalerConfig config_;
  LossScalerState state_;
};

}  // namespace trident::optim
