// A sharded parameter's local elements as contiguous runs: each (outer index, chunk) of its
// ShardSpec (nn/parameters.h) is `length` consecutive local elements holding consecutive
// logical elements (or padding). for_each_local_element walks the same runs element by
// element; code that handles whole runs at once (the bf16 copy's vectorised stochastic
// rounding, nn/bf16_weights.cpp) takes them from here.
#pragma once

#include <cstdint>
#include <vector>

#include "nn/parameters.h"

namespace trident::nn {

struct LocalRun {
  int64_t local = 0;    // first local flat index
  int64_t logical = 0;  // its logical flat index; -1: the run is padding
  int64_t length = 0;
};

// In local order, covering [0, local numel) exactly; a replicated parameter is one run.
std::vector<LocalRun> local_runs(const ParamInfo& info);

}  // namespace trident::nn
