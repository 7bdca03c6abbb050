// Housekeeping of a checkpoint directory by the run that owns it (ckpt/dir_lock.h): removing
// what an interrupted save left behind, and keeping only the newest checkpoints (--keep-last).
// Only call these while holding the directory's lock: another live run's staging folder would
// otherwise look stale.
#pragma once

#include <string>
#include <vector>

namespace trident::ckpt {

// Removes the leftovers of saves that never finished: staging folders .step_NNNNNNNN.tmp,
// directories moved aside to be replaced (step_NNNNNNNN.old-PID) or pruned
// (.step_NNNNNNNN.deleting), and temporary files .NAME.tmp-PID. Returns the names removed.
std::vector<std::string> remove_interrupted_saves(const std::string& root);

// Keeps the `keep_last` newest step directories and the one ROOT/latest names, removes the
// other step directories (each renamed away first, so none is ever seen half deleted).
// keep_last <= 0 keeps everything. Returns the names removed, oldest first.
std::vector<std::string> prune_step_dirs(const std::string& root, int keep_last);

}  // namespace trident::ckpt
