// Claiming and tidying the run's checkpoint directory (see ckpt_dir_owner.h).
#include "train/ckpt_dir_owner.h"

#include <fmt/format.h>

#include <vector>

#include "ckpt/checkpoint.h"
#include "ckpt/retention.h"
#include "core/check.h"

namespace trident::train {

CheckpointDirOwner::CheckpointDirOwner(comm::Communicator& world, const std::string& root,
                                       std::int64_t start_step, int keep_last)
    : root_(root), keep_last_(keep_last) {
  std::string error;
  if (world.rank() == 0) {
    try {
      lock_.emplace(root);
      if (!lock_->note().empty()) fmt::print(stderr, "checkpoints: {}\n", lock_->note());
      for (const std::string& name : ckpt::remove_interrupted_saves(root)) {
        fmt::print(stderr, "checkpoints: removed '{}/{}', left by a save that never finished\n", root, name);
      }
      const std::int64_t latest = ckpt::latest_step(root);
      TRI_CHECK(latest <= start_step,
                "--ckpt-dir '{}' already holds checkpoints up to step {} ({} names {}), but this "
                "run starts at step {}: its checkpoints would be older than {}, which never moves "
                "backwards. Continue that run (--resume {}), or give another --ckpt-dir",
                root, latest, ckpt::kLatestFile, ckpt::step_dir_name(std::max<std::int64_t>(latest, 0)),
                start_step, ckpt::kLatestFile, root);
    } catch (const std::exception& e) {
      error = e.what();
      lock_.reset();
    }
  }
  comm::throw_if_root_failed(world, error);  // rank 0's message, on every rank
}

void CheckpointDirOwner::after_save() {
  if (!lock_) return;
  const std::vector<std::string> removed = ckpt::prune_step_dirs(root_, keep_last_);
  if (!removed.empty()) {
    fmt::print(stderr, "checkpoints: removed {} (--keep-last {})\n", fmt::join(removed, ", "), keep_last_);
  }
}

}  // namespace trident::train
