// Ownership and housekeeping of a checkpoint directory: the lock (refused while held by a live
// process, taken over with a note once its holder died, released cleanly), `latest` never
// moving backwards, leftovers of interrupted saves removed, and --keep-last pruning.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "ckpt/checkpoint.h"
#include "ckpt/dir_lock.h"
#include "ckpt/retention.h"
#include "../support/expect_error.h"
#include "../support/temp_dir.h"

namespace fs = std::filesystem;
using namespace trident;
using namespace trident::ckpt;
using trident::test::TempDir;

namespace {

std::string read_file(const std::string& p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_file(const std::string& p, const std::string& text) { std::ofstream(p) << text; }

std::vector<std::string> entries(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

void make_step_dirs(const std::string& root, std::initializer_list<int> steps) {
  for (int s : steps) {
    fs::create_directories(fs::path(root) / step_dir_name(s));
    write_file((fs::path(root) / step_dir_name(s) / kModelFile).string(), "x");
  }
}

// A forked process that takes the lock of `root` and holds it until the parent closes the
// pipe (then releases it cleanly), or dies at once by SIGKILL when `die` is set.
struct Forked {
  pid_t pid = -1;
  int release_fd = -1;
};

Forked fork_lock_holder(const std::string& root, bool die) {
  int ready[2], release[2];
  EXPECT_EQ(::pipe(ready), 0);
  EXPECT_EQ(::pipe(release), 0);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(ready[0]);
    ::close(release[1]);
    {
      DirLock lock(root);
      char c = 'x';
      (void)!::write(ready[1], &c, 1);
      if (die) ::kill(::getpid(), SIGKILL);  // no destructor, no clean release
      (void)!::read(release[0], &c, 1);    // until the parent closes the pipe
    }
    _exit(0);
  }
  ::close(ready[1]);
  ::close(release[0]);
  char c;
  EXPECT_EQ(::read(ready[0], &c, 1), 1);
  ::close(ready[0]);
  return {pid, release[1]};
}

}  // namespace

TEST(CkptDirLock, SecondOwnerIsRefusedNamingTheFirst) {
  TempDir dir;
  const Forked holder = fork_lock_holder(dir.path(), /*die=*/false);
  const std::string owner = fmt::format("pid {} on host", holder.pid);
  EXPECT_ERROR_HAS(DirLock{dir.path()}, "is in use by another run", owner.c_str(), "another --ckpt-dir");
  ::close(holder.release_fd);  // the holder exits cleanly and releases
  int status = 0;
  ASSERT_EQ(::waitpid(holder.pid, &status, 0), holder.pid);
  EXPECT_EQ(read_file(dir.sub(kLockFile)), "");  // emptied on release
  DirLock mine(dir.path());
  EXPECT_EQ(mine.note(), "");  // a clean release is no stale lock
  EXPECT_NE(read_file(dir.sub(kLockFile)).find(fmt::format("\"pid\":{}", ::getpid())), std::string::npos);
}

TEST(CkptDirLock, LockOfAKilledOwnerIsTakenOverWithANote) {
  TempDir dir;
  const Forked holder = fork_lock_holder(dir.path(), /*die=*/true);
  int status = 0;
  ASSERT_EQ(::waitpid(holder.pid, &status, 0), holder.pid);
  ASSERT_TRUE(WIFSIGNALED(status));
  ::close(holder.release_fd);
  EXPECT_NE(read_file(dir.sub(kLockFile)).find(fmt::format("\"pid\":{}", holder.pid)), std::string::npos);
  DirLock mine(dir.path());
  EXPECT_NE(mine.note().find("took over"), std::string::npos) << mine.note();
  EXPECT_NE(mine.note().find(fmt::format("pid {}", holder.pid)), std::string::npos) << mine.note();
  EXPECT_NE(mine.note().find("no longer running"), std::string::npos) << mine.note();
}

TEST(CkptLatest, NeverMovesBackwards) {
  TempDir dir;
  make_step_dirs(dir.path(), {8});
  write_file(dir.sub(kLatestFile), "step_00000008\n");
  EXPECT_EQ(latest_step(dir.path()), 8);
  nn::ModelConfig c;
  c.n_layer = 1, c.n_head = 1, c.n_embd = 4, c.n_positions = 4, c.vocab_size = 8;
  CheckpointWriter older(dir.path(), 4, c);
  EXPECT_ERROR_HAS(older.commit(), "not saving checkpoint step_00000004", "names step_00000008",
                   "never moves backwards");
  EXPECT_EQ(read_file(dir.sub(kLatestFile)), "step_00000008\n");
  EXPECT_EQ(entries(dir.path()), (std::vector<std::string>{"latest", "step_00000008"}));
  write_file(dir.sub(kLatestFile), "garbage\n");
  EXPECT_EQ(latest_step(dir.path()), -1);
  EXPECT_EQ(latest_step(dir.sub("missing")), -1);
}

TEST(CkptRetention, InterruptedSavesAreRemoved) {
  TempDir dir;
  make_step_dirs(dir.path(), {3});
  write_file(dir.sub(kLatestFile), "step_00000003\n");
  write_file(dir.sub(kLockFile), "");
  fs::create_directories(dir.sub(".step_00000004.tmp"));
  write_file(dir.sub(".step_00000004.tmp/model.safetensors"), "partial");
  fs::create_directories(dir.sub("step_00000002.old-123"));
  fs::create_directories(dir.sub(".step_00000001.deleting"));
  write_file(dir.sub(".latest.tmp-99"), "step_00000004\n");
  write_file(dir.sub("notes.txt"), "the user's own file");
  EXPECT_EQ(remove_interrupted_saves(dir.path()),
            (std::vector<std::string>{".latest.tmp-99", ".step_00000001.deleting", ".step_00000004.tmp",
                                      "step_00000002.old-123"}));
  EXPECT_EQ(entries(dir.path()),
            (std::vector<std::string>{"latest", "notes.txt", "step_00000003", "trident.lock"}));
}

TEST(CkptRetention, KeepLastKeepsTheNewestAndLatest) {
  TempDir dir;
  make_step_dirs(dir.path(), {2, 4, 6, 8, 10});
  write_file(dir.sub(kLatestFile), "step_00000010\n");
  EXPECT_TRUE(prune_step_dirs(dir.path(), 0).empty());  // 0: keep everything
  EXPECT_EQ(prune_step_dirs(dir.path(), 2), (std::vector<std::string>{"step_00000002", "step_00000004",
                                                                     "step_00000006"}));
  EXPECT_EQ(entries(dir.path()), (std::vector<std::string>{"latest", "step_00000008", "step_00000010"}));
  // latest is kept even when it is not among the newest (written by hand, say).
  make_step_dirs(dir.path(), {12, 14});
  write_file(dir.sub(kLatestFile), "step_00000008\n");
  EXPECT_EQ(prune_step_dirs(dir.path(), 1), (std::vector<std::string>{"step_00000010", "step_00000012"}));
  EXPECT_EQ(entries(dir.path()), (std::vector<std::string>{"latest", "step_00000008", "step_00000014"}));
}
