// The poisoned-step policy (see nonfinite_policy.h).
#include "train/nonfinite_policy.h"

#include <fmt/format.h>

#include "core/check.h"

namespace trident::train {

std::string NonfiniteGuard::record(int64_t step, const parallel::StepStats& stats) {
  if (!stats.skipped) {
    consecutive_ = 0;
    return {};
  }
  if (stats.overflow) {  // fp16: the loss scaler backs off; not a poisoned step
    ++overflows_;
    return fmt::format("step {}: fp16 gradients overflowed at loss scale {:g}; the update was skipped "
                       "and the scale lowered (Megatron-style dynamic loss scaling)", step, stats.loss_scale);
  }
  ++consecutive_;
  ++total_;
  const std::string what = fmt::format("step {}: loss {} and grad norm {} (not finite on some rank)",
                                       step, stats.loss, stats.grad_norm);
  TRI_CHECK(policy_ != NonfinitePolicy::kStop,
            "{}; the update was not applied and --on-nonfinite stop ends the run here, without "
            "writing a checkpoint (the last one written stays 'latest'); lower --lr, check the "
            "data, or pass --on-nonfinite skip to skip such steps", what);
  TRI_CHECK(consecutive_ < max_bad_steps_,
            "{}; that is {} non-finite steps in a row (--max-bad-steps {}), so the run stops "
            "without writing a checkpoint (the last one written stays 'latest'); lower --lr "
            "(or raise --warmup-steps, or check the data) and start again or resume from the "
            "last checkpoint", what, consecutive_, max_bad_steps_);
  return fmt::format("skipped {}; the update was not applied ({} in a row, at most {})", what,
                     consecutive_, max_bad_steps_);
}

}  // namespace trident::train
