// Learning-rate schedules: linear warmup then cosine decay to a minimum, or constant.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace trident::optim {

struct LrSchedule {
  enum class Kind { kCosine, kConstant };
  Kind kind = Kind::kCosine;
  float max_lr = 6e-4f;
  float min_lr = 6e-5f;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;

  // LR for 0-based step: (step+1)/warmup * max_lr during warmup (never 0 at step 0); then
  // min_lr + 0.5 (1 + cos(pi * progress)) (max_lr - min_lr), progress from 0 to 1 at the end.
  float at(int64_t step) const;
};

// The spellings, indexed by LrSchedule::Kind's value: "cosine", "constant".
std::span<const std::string_view> lr_schedule_kind_names();
LrSchedule::Kind parse_lr_schedule_kind(const std::string& name);

}  // namespace trident::optim
