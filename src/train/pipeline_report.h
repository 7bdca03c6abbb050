// What `trident train` tells about the pipeline when pp > 1: each step's measured idle
// fraction (the bubble) in the metrics, and at the end the mean over the run beside the
// schedule's theoretical bubble, the last step's timeline as ASCII on stderr and, with
// --pipeline-timeline FILE, as an SVG chart. The timeline is the executor's own record
// (pp::PipelineExecutor::gather_timeline) of world rank 0's pipeline.
#pragma once

#include <optional>
#include <string>

#include "parallel/pipeline/executor.h"
#include "parallel/pipeline/simulator.h"

namespace trident::train {

class PipelineReport {
 public:
  // `executor` null (pp == 1) makes every call a no-op.
  explicit PipelineReport(pp::PipelineExecutor* executor);

  // Collective over the pp group (every rank calls it after each train step). Returns the
  // step's mean idle fraction over the pipeline's ranks; nothing when pp == 1.
  std::optional<double> record_step();
  // "pipeline: idle 12.3% of the step (mean over 99 steps after the first; the 1f1b pp=2 M=4
  // schedule's bubble is 20.0%)" plus the last step's timeline; empty when pp == 1 or no
  // step was recorded.
  std::string summary() const;
  // Writes the last step's timeline as SVG (atomically); no-op when pp == 1.
  void write_svg(const std::string& path) const;

 private:
  pp::PipelineExecutor* executor_;
  pp::Timeline last_;
  double idle_sum_ = 0.0;  // over recorded steps after the first (warm-up)
  int steps_ = 0;
};

}  // namespace trident::train
