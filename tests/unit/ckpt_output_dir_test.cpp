// require_new_output_dir: the one check every command that writes a new model directory makes.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "ckpt/atomic_file.h"
#include "core/check.h"
#include "../support/expect_error.h"
#include "../support/temp_dir.h"

namespace {

using trident::ckpt::require_new_output_dir;
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

}  // namespace
