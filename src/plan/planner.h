// The planner: every valid layout of a request with its predicted per-rank memory (by
// category) and step time, ranked by predicted tokens/s among those that fit the memory
// limit; and the table `trident plan` prints. Enumeration, memory and cost models live in
// layout.h, memory_model.h and cost_model.h.
#pragma once

#include <string>
#include <vector>

#include "plan/cost_model.h"
#include "plan/layout.h"
#include "plan/memory_model.h"

namespace trident::plan {

struct PlanRow {
  Layout layout;
  MemoryPrediction memory;
  StepPrediction step;
  bool fits = true;
};

struct Plan {
  std::vector<PlanRow> rows;         // fitting ones by predicted tokens/s (best first), then the rest by memory
  std::vector<Candidate> rejected;   // invalid layouts with reasons
  int fitting() const;
};

// Predicts every valid layout. With request.offload_auto and a known machine.disk, a layout
// that does not fit is predicted again with --offload optimizer (never one that fits: offload
// only adds disk time), and where that still does not fit, a ZeRO-3 or one-dp-rank layout with
// --offload optimizer+params at ZeRO 3; each kept when it is smaller. Throws trident::Error when none fits --memory-per-rank, naming the
// smallest requirement, the layout that has it and what offload would need.
Plan make_plan(const PlanRequest& request, ComputeModel& compute, const MachineModel& machine);

struct FormatOptions {
  bool all = false;       // every micro-batch count; otherwise the best fitting M per layout
  int top = 0;            // at most this many rows; 0: all
  bool show_rejected = true;
};
std::string format_plan(const Plan& plan, const PlanRequest& request, const FormatOptions& options = {});

// The prediction for one layout (used by the benchmark); throws if the layout is invalid.
PlanRow predict_layout(const PlanRequest& request, const Layout& layout, ComputeModel& compute,
                       const MachineModel& machine);

}  // namespace trident::plan
