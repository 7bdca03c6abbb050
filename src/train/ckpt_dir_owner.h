// A run's hold on its --ckpt-dir for as long as it lives: rank 0 (the rank that writes) takes
// the directory's lock (ckpt/dir_lock.h), removes what interrupted saves left, and checks that
// this run's checkpoints would not be older than the one `latest` names; every rank learns
// the outcome, so a refused run stops on all of them with the same message. After each save,
// rank 0 prunes old checkpoints (--keep-last).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "ckpt/dir_lock.h"
#include "comm/communicator.h"

namespace trident::train {

class CheckpointDirOwner {
 public:
  // Collective over `world`. Throws trident::Error on every rank when the directory is in use
  // by another run, or its latest checkpoint is later than `start_step` (where this run's
  // first checkpoint would come from). Notes (a stale lock taken over, leftovers removed) go
  // to stderr from rank 0.
  CheckpointDirOwner(comm::Communicator& world, const std::string& root, std::int64_t start_step,
                     int keep_last);

  // After a checkpoint was committed: rank 0 removes the step directories --keep-last does not
  // keep (never the one `latest` names) and says which. Not collective.
  void after_save();

 private:
  std::string root_;
  int keep_last_;
  std::optional<ckpt::DirLock> lock_;  // rank 0 only
};

}  // namespace trident::train
