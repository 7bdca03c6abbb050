// Warmup + cosine learning-rate schedule.
#include "optim/lr_schedule.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"

namespace trident::optim {

float LrSchedule::at(int64_t step) const {
  if (step < warmup_steps) {
    return max_lr * static_cast<float>(step + 1) / static_cast<float>(warmup_steps);
  }
  if (kind == Kind::kConstant) return max_lr;
  const int64_t decay_steps = std::max<int64_t>(1, total_steps - warmup_steps);
  const double progress =
      std::min(1.0, static_cast<double>(step - warmup_steps) / static_cast<double>(decay_steps));
  const double coeff = 0.5 * (1.0 + std::cos(M_PI * progress));
  return static_cast<float>(min_lr + coeff * (max_lr - min_lr));
}

namespace {
constexpr std::string_view kKindNames[] = {"cosine", "constant"};
}  // namespace

std::span<const std::string_view> lr_schedule_kind_names() { return kKindNames; }

LrSchedule::Kind parse_lr_schedule_kind(const std::string& name) {
  if (name == "cosine") return LrSchedule::Kind::kCosine;
  if (name == "constant") return LrSchedule::Kind::kConstant;
  TRI_FAIL("unknown lr schedule '{}'; use cosine or constant", name);
}

}  // namespace trident::optim
