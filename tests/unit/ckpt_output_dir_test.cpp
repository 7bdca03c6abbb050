// require_new_output_dir: the one check every command that writes a new model directory makes.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "ckpt/atomic_file.h"
#include "core/check.h"
#include "../support/expect_error.h"
#include "../support/temp_dir.h"

namespace {

using trident::ckpt::commit_new_output_dir;
using trident::ckpt::require_new_output_dir;
using trident::ckpt::stage_new_output_dir;
using trident::ckpt::StagedDirectory;
using trident::test::TempDir;

TEST(CkptOutputDir, MissingOrEmptyDirectoryIsAcceptedAndNotCreated) {
  TempDir dir;
  require_new_output_dir(dir.sub("new"));
  EXPECT_FALSE(std::filesystem::exists(dir.sub("new")));
  require_new_output_dir(dir.path());  // exists, empty
}

TEST(CkptOutputDir, NonEmptyDirectoryOrFileIsRefusedNamingTheFlag) {
  TempDir dir;
  std::ofstream(dir.sub("model.safetensors")) << "x";
  EXPECT_ERROR_HAS(require_new_output_dir(dir.path()), "--out '", "exists and is not empty", "nothing was written");
  EXPECT_ERROR_HAS(require_new_output_dir(dir.sub("model.safetensors"), "--into"), "--into '",
                   "exists and is not a directory");
}

bool only_entry_is(const std::string& dir, const std::string& name) {
  int n = 0;
  bool found = false;
  for (const auto& e : std::filesystem::directory_iterator(dir)) ++n, found |= e.path().filename() == name;
  return n == 1 && found;
}

TEST(CkptOutputDir, StagedOutputAppearsOnlyAtCommit) {
  TempDir dir;
  const std::string out = dir.sub("q8") + "/";  // a trailing slash names the same directory
  {
    StagedDirectory staged = stage_new_output_dir(out);
    std::ofstream(staged.path() + "/config.json") << "{}";
    EXPECT_FALSE(std::filesystem::exists(dir.sub("q8")));
    commit_new_output_dir(staged);
  }
  EXPECT_TRUE(std::filesystem::is_regular_file(dir.sub("q8/config.json")));
  EXPECT_TRUE(only_entry_is(dir.path(), "q8"));  // no staging directory left
}

TEST(CkptOutputDir, AKilledOrFailedCommandLeavesNothing) {
  TempDir dir;
  {
    StagedDirectory staged = stage_new_output_dir(dir.sub("out"));
    std::ofstream(staged.path() + "/model.safetensors") << "partial";
  }  // destroyed uncommitted, as on an exception
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

TEST(CkptOutputDir, AnOutputWrittenMeanwhileIsNotReplaced) {
  TempDir dir;
  StagedDirectory staged = stage_new_output_dir(dir.sub("out"));
  std::filesystem::create_directory(dir.sub("out"));
  std::ofstream(dir.sub("out/config.json")) << "theirs";
  EXPECT_ERROR_HAS(commit_new_output_dir(staged), "exists and is not empty", "another run");
  EXPECT_TRUE(only_entry_is(dir.path(), "out"));
  EXPECT_TRUE(only_entry_is(dir.sub("out"), "config.json"));
}

}  // namespace
