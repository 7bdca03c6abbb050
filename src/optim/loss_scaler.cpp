#include "optim/loss_scaler.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"

namespace trident::optim {

LossScaler::LossScaler(const LossScalerConfig& config) : config_(config) {
  TRI_CHECK(std::isfinite(config.initial_scale) && config.initial_scale > 0.0,
            "--initial-loss-scale must be a positive finite number (got {})", config.initial_scale);
  TRI_CHECK(std::isfinite(config.min_scale) && config.min_scale > 0.0,
            "the minimum loss scale must be positive (got {})", config.min_scale);
  TRI_CHECK(config.initial_scale >= config.min_scale,
            "--initial-loss-scale ({}) is below the minimum loss scale ({}); raise it",
            config.initial_scale, config.min_scale);
  TRI_CHECK(config.growth_factor > 1.0, "the loss-scale growth factor must exceed 1 (got {})",
            config.growth_factor);
  TRI_CHECK(config.backoff_factor > 0.0 && config.backoff_factor < 1.0,
            "the loss-scale backoff factor must lie in (0, 1) (got {})", config.backoff_factor);
  TRI_CHECK(config.growth_interval >= 1, "--loss-scale-window must be at least 1 (got {})",
            config.growth_interval);
  TRI_CHECK(config.hysteresis >= 1, "the loss-scale hysteresis must be at least 1 (got {})",
            config.hysteresis);
  state_.scale = config.initial_scale;
  state_.growth_tracker = 0;
  state_.hysteresis_tracker = config.hysteresis;
}

void LossScaler::update(bool found_nonfinite) {
  if (found_nonfinite) {
    state_.growth_tracker = 0;
    state_.hysteresis_tracker -= 1;
    if (state_.hysteresis_tracker <= 0) {
      state_.scale = std::max(state_.scale * config_.backoff_factor, config_.min_scale);
    }
    return;
  }
  state_.growth_tracker += 1;
  if (state_.growth_tracker == config_.growth_interval) {
    state_.growth_tracker = 0;
    state_.hysteresis_tracker = config_.hysteresis;
    state_.scale *= config_.growth_factor;
  }
}

void LossScaler::restore(const LossScalerState& state) {
  TRI_CHECK(std::isfinite(state.scale) && state.scale >= config_.min_scale,
            "checkpointed loss scale {} is not finite or below the minimum {}", state.scale,
            config_.min_scale);
  TRI_CHECK(state.growth_tracker >= 0 && state.growth_tracker < config_.growth_interval,
            "checkpointed loss-scale growth tracker {} is outside [0, {})", state.growth_tracker,
            config_.growth_interval);
  TRI_CHECK(state.hysteresis_tracker <= config_.hysteresis,
            "checkpointed loss-scale hysteresis tracker {} exceeds the hysteresis {}",
            state.hysteresis_tracker, config_.hysteresis);
  state_ = state;
}

}  // namespace trident::optim
