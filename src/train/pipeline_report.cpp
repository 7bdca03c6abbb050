// Pipeline bubble reporting for the training loop (see pipeline_report.h).
#include "train/pipeline_report.h"

#include <fmt/format.h>

#include "ckpt/atomic_file.h"

namespace trident::train {

PipelineReport::PipelineReport(pp::PipelineExecutor* executor) : executor_(executor) {}

std::optional<double> PipelineReport::record_step() {
  if (executor_ == nullptr) return std::nullopt;
  last_ = executor_->gather_timeline();
  const double idle = last_.mean_idle_fraction();
  // The first step also pays for one-time allocations (activation pools, send buffers).
  if (++steps_ > 1) idle_sum_ += idle;
  return idle;
}

std::string PipelineReport::summary() const {
  if (executor_ == nullptr || steps_ == 0) return "";
  // The schedule's bubble with equal stage costs: (p-1)/(m+p-1), or /(V*m+p-1) interleaved.
  const pp::SimResult ideal = pp::simulate(executor_->spec());
  double theory = 0.0;
  for (double b : ideal.bubble) theory += b / static_cast<double>(ideal.bubble.size());
  const double mean = steps_ > 1 ? idle_sum_ / (steps_ - 1) : last_.mean_idle_fraction();
  return fmt::format(
      "pipeline: idle {:.1f}% of the step (mean over the pipeline's ranks and {} step(s){}); "
      "with equal stage costs the {} schedule's bubble is {:.1f}%\nlast step's timeline:\n{}",
      100.0 * mean, steps_ > 1 ? steps_ - 1 : 1, steps_ > 1 ? " after the first" : "",
      executor_->spec().describe(), 100.0 * theory, last_.ascii(96));
}

void PipelineReport::write_svg(const std::string& path) const {
  if (executor_ == nullptr || steps_ == 0) return;
  ckpt::write_file_atomic(path, last_.svg());
}

}  // namespace trident::train
