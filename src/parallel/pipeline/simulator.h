// Pipeline simulator and timeline: runs every rank's instruction list (schedule.h) with
// per-instruction costs, honouring the data dependencies (a Recv completes only after the
// matching Send plus the message latency; ReduceTiedGrads is a rendezvous of its two
// ranks), checks that the lists are a valid schedule, reports deadlocks by naming each
// stuck instruction, and measures step time, bubble and peak live activations per rank.
// The executor records the same Timeline from a real run, so the two print alike.
#pragma once

#include <string>
#include <vector>

#include "parallel/pipeline/schedule.h"

namespace trident::pp {

// One compute instruction's interval (seconds, or cost units for the simulator).
struct TimelineEvent {
  Op op = Op::kForward;  // kForward or kBackward
  int mb = 0;
  int chunk = 0;
  double start = 0.0, end = 0.0;
};

struct Timeline {
  int virtual_stages = 1;
  std::vector<std::vector<TimelineEvent>> ranks;  // [pp rank] in execution order
  double step_time = 0.0;                          // end of the step (all ranks)

  double busy(int rank) const;             // sum of compute durations
  double idle_fraction(int rank) const;    // 1 - busy / step_time
  double mean_idle_fraction() const;
  // Rows = ranks, `width` columns of step_time / width each: the micro-batch digit (mb % 10)
  // for a forward, a letter for a backward (a = mb 0, b = 1, ...), '.' idle. With a legend.
  std::string ascii(int width = 96) const;
  // A standalone SVG chart (forward blue, backward green, micro-batch numbers inside).
  std::string svg(double px_per_unit = 0.0) const;
};

// Per-chunk costs. `forward` and `backward` are one chunk's time for one micro-batch (for
// the interleaved schedule, a chunk holds 1/V of a rank's layers: scale accordingly).
struct CostModel {
  double forward = 1.0;
  double backward = 2.0;
  double comm = 0.0;  // latency of one activation or gradient message
  double tied = 0.0;  // the tied-embedding gradient exchange
  // Measured costs per [rank][local chunk]; when non-empty they replace forward/backward.
  std::vector<std::vector<double>> forward_by_chunk, backward_by_chunk;

  double forward_cost(int rank, int chunk) const;
  double backward_cost(int rank, int chunk) const;
};

struct SimResult {
  bool ok = false;          // false: deadlock or invalid schedule (see error)
  std::string error;        // names the stuck or invalid instructions, with each rank's list
  double step_time = 0.0;
  std::vector<double> busy;            // per rank
  std::vector<double> bubble;          // per rank: idle / step_time
  std::vector<int> peak_live;          // per rank: most chunk activations held at once
  Timeline timeline;
  std::string summary() const;         // a table of the per-rank numbers
};

// Simulates the lists (index = pp rank). Never throws for a bad schedule: returns ok=false.
SimResult simulate(const ScheduleSpec& spec, const std::vector<std::vector<Instruction>>& lists,
                   const CostModel& costs = {});
// build_all_schedules + simulate.
SimResult simulate(const ScheduleSpec& spec, const CostModel& costs = {});

}  // namespace trident::pp
