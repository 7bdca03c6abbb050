// Ownership of a checkpoint directory by one process: ROOT/trident.lock holds the owner's host,
// pid and start time under an open-file-description lock (fcntl F_OFD_SETLK, which also works
// on NFS). The kernel drops the lock when its process dies, however it dies, so a lock left by
// a killed run is simply free: the next owner finds the dead owner's details still in the file
// and takes over with a note. Which rank takes the lock, and telling the others, is left to
// train/ckpt_dir_owner.h.
#pragma once

#include <cstdint>
#include <string>

namespace trident::ckpt {

inline constexpr const char* kLockFile = "trident.lock";

struct LockOwner {
  std::string host;
  std::int64_t pid = 0;
  std::string started;  // UTC, ISO 8601
  std::string describe() const;  // "pid 123 on host node7 (started 2026-12-01T20:00:00Z)"
};

class DirLock {
 public:
  // Creates ROOT if needed and takes its lock; throws trident::Error naming the owner when a
  // live process holds it. Never blocks.
  explicit DirLock(const std::string& root);
  // Empties the file (so the next owner sees a clean release) and drops the lock.
  ~DirLock();
  DirLock(const DirLock&) = delete;
  DirLock& operator=(const DirLock&) = delete;

  const std::string& path() const { return path_; }
  // What start-up should tell the user, empty when nothing: a stale lock taken over, or a file
  // system without locks (then a second run on the directory would not be detected).
  const std::string& note() const { return note_; }

 private:
  std::string path_;
  std::string note_;
  int fd_ = -1;
};

}  // namespace trident::ckpt
