// --batch-log: one JSON line per step naming the rows of its global batch (the training
// shard offset of each row's first token), so an independent program can replay exactly what
// a run trained on (tests/ref/train_path_reference_test.py does). Written by the lead rank only;
// the offsets come from the sampler, which defines the global batch for every layout.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>

#include "data/batch_sampler.h"

namespace trident::train {

class BatchLog {
 public:
  // Inactive when `path` is empty or this rank is not the lead. A resumed run (start_step > 0)
  // appends, like the metrics file.
  BatchLog(const std::string& path, bool lead, int64_t start_step);
  void record(int64_t step, const data::BatchSampler& sampler);

 private:
  std::ofstream out_;
  std::string path_;
};

}  // namespace trident::train
