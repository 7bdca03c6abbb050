// The dynamic loss scaler's state machine, step by step against Megatron-LM's
// DynamicGradScaler: the default start (2^32), growth x2 only after `growth_interval` clean
// steps in a row, an overflow resetting that count, hysteresis (the first overflow of a budget
// of 2 keeps the scale, the second halves it), refill of the budget only on growth, the
// minimum floor, checkpoint restore, and one clear error per bad setting.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "optim/loss_scaler.h"
#include "../support/expect_error.h"

namespace trident::optim {
namespace {

LossScalerConfig small_window() {
  LossScalerConfig c;
  c.initial_scale = 1024.0;
  c.growth_interval = 3;
  c.hysteresis = 2;
  return c;
}

TEST(LossScaler, DefaultsAreMegatrons) {
  LossScaler s{LossScalerConfig{}};
  EXPECT_EQ(s.scale(), std::ldexp(1.0, 32));
  EXPECT_EQ(s.state().hysteresis_tracker, 2);
  EXPECT_EQ(s.inverse_scale(), std::ldexp(1.0, -32));
}

TEST(LossScaler, GrowsOnlyAfterAFullWindowOfCleanSteps) {
  LossScaler s{small_window()};
  s.update(false);
  s.update(false);
  EXPECT_EQ(s.scale(), 1024.0);
  s.update(false);  // third clean step in a row
  EXPECT_EQ(s.scale(), 2048.0);
  EXPECT_EQ(s.state().growth_tracker, 0);
  for (int i = 0; i < 3; ++i) s.update(false);
  EXPECT_EQ(s.scale(), 4096.0);
}

TEST(LossScaler, OverflowResetsTheWindow) {
  LossScaler s{small_window()};
  s.update(false);
  s.update(false);
  s.update(true);  // first overflow: within the hysteresis budget, scale kept
  EXPECT_EQ(s.scale(), 1024.0);
  EXPECT_EQ(s.state().growth_tracker, 0);
  s.update(false);
  s.update(false);
  EXPECT_EQ(s.scale(), 1024.0);  // the two clean steps before the overflow do not count
  s.update(false);
  EXPECT_EQ(s.scale(), 2048.0);
}

TEST(LossScaler, HysteresisDelaysBackoffThenEveryOverflowHalves) {
  LossScaler s{small_window()};
  s.update(true);
  EXPECT_EQ(s.scale(), 1024.0);
  EXPECT_EQ(s.state().hysteresis_tracker, 1);
  s.update(true);
  EXPECT_EQ(s.scale(), 512.0);
  // A clean step does not refill the budget (as in Megatron): the next overflow halves again.
  s.update(false);
  s.update(true);
  EXPECT_EQ(s.scale(), 256.0);
}

TEST(LossScaler, GrowthRefillsTheHysteresisBudget) {
  LossScaler s{small_window()};
  s.update(true);
  s.update(true);  // budget spent, 512
  for (int i = 0; i < 3; ++i) s.update(false);
  EXPECT_EQ(s.scale(), 1024.0);
  EXPECT_EQ(s.state().hysteresis_tracker, 2);
  s.update(true);
  EXPECT_EQ(s.scale(), 1024.0);  // first overflow of a refilled budget keeps the scale
}

TEST(LossScaler, NeverDropsBelowTheMinimum) {
  LossScalerConfig c = small_window();
  c.initial_scale = 4.0;
  c.hysteresis = 1;
  LossScaler s{c};
  for (int i = 0; i < 10; ++i) s.update(true);
  EXPECT_EQ(s.scale(), 1.0);
}

TEST(LossScaler, RestoreContinuesFromTheCheckpointedState) {
  LossScaler a{small_window()};
  a.update(false);
  a.update(true);
  a.update(false);
  LossScaler b{small_window()};
  b.restore(a.state());
  for (bool overflow : {false, true, true, false, false, false}) {
    a.update(overflow);
    b.update(overflow);
    EXPECT_EQ(a.scale(), b.scale());
  }
  EXPECT_ERROR_HAS(b.restore(LossScalerState{0.5, 0, 2}), "below the minimum");
  EXPECT_ERROR_HAS(b.restore(LossScalerState{8.0, 3, 2}), "growth tracker");
  EXPECT_ERROR_HAS(b.restore(LossScalerState{8.0, 0, 3}), "hysteresis tracker");
}

TEST(LossScaler, BadSettingsAreRefusedByName) {
  auto with = [](auto edit) {
    LossScalerConfig c;
    edit(c);
    return c;
  };
  EXPECT_ERROR_HAS(LossScaler{with([](auto& c) { c.initial_scale = 0.0; })},
                   "--initial-loss-scale");
  EXPECT_ERROR_HAS(LossScaler{with([](auto& c) {
                     c.initial_scale = std::numeric_limits<double>::infinity();
                   })},
                   "--initial-loss-scale");
  EXPECT_ERROR_HAS(LossScaler{with([](auto& c) { c.initial_scale = 0.5; })}, "below the minimum");
  EXPECT_ERROR_HAS(LossScaler{with([](auto& c) { c.growth_interval = 0; })},
                   "--loss-scale-window");
  EXPECT_ERROR_HAS(LossScaler{with([](auto& c) { c.hysteresis = 0; })}, "hysteresis");
  EXPECT_ERROR_HAS(LossScaler{with([](auto& c) { c.backoff_factor = 1.0; })}, "backoff");
}

}  // namespace
}  // namespace trident::optim
