// --async-ckpt's writer half: a CheckpointSnapshot (what the step boundary gathered on rank 0)
// written by write_snapshot is a checkpoint that loads back to exactly the snapshot's values,
// through the same staging + rename + latest as every save; a snapshot holding NaN or inf is
// refused before anything is staged, leaving the directory and `latest` as they were.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "ckpt/checkpoint.h"
#include "train/checkpointing.h"
#include "../support/expect_error.h"
#include "../support/temp_dir.h"

namespace fs = std::filesystem;
using namespace trident;

namespace {

nn::ModelConfig micro_config() {
  nn::ModelConfig c;
  c.n_layer = 2, c.n_head = 2, c.n_embd = 8, c.n_positions = 16, c.vocab_size = 50;
  return c;
}

int64_t logical_params(const nn::ModelConfig& c) {
  int64_t n = 0;
  for (const auto& spec : nn::model_tensor_specs(c)) n += shape_numel(spec.shape);
  return n;
}

// values[i] = i * 0.001 + 0.5: every tensor (and both moments) distinct, all finite. exp_avg_sq
// stays positive, as a real one is.
train::CheckpointSnapshot make_snapshot(MemoryTracker& tracker, int64_t step) {
  train::CheckpointSnapshot s;
  s.config = micro_config();
  s.step = step;
  s.optimizer_step = step;
  s.trident_state = {{"step", step}, {"note", "snapshot"}};
  s.values = FloatBuffer(tracker, MemCategory::kCheckpointSnapshot,
                         static_cast<std::size_t>(3 * logical_params(s.config)));
  for (std::size_t i = 0; i < s.values.size(); ++i) s.values[i] = 0.5f + 0.001f * static_cast<float>(i);
  return s;
}

std::vector<std::string> entries(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

TEST(TrainSnapshot, WrittenSnapshotLoadsBackExactly) {
  test::TempDir dir;
  MemoryTracker tracker;
  const train::CheckpointSnapshot s = make_snapshot(tracker, 7);
  EXPECT_EQ(tracker.current(MemCategory::kCheckpointSnapshot), s.values.size() * sizeof(float));
  const std::string written = train::write_snapshot(s, dir.path());
  EXPECT_EQ(written, dir.path() + "/step_00000007");
  const ckpt::LoadedCheckpoint ck = ckpt::load_checkpoint(dir.path());
  EXPECT_EQ(ck.step, 7);
  EXPECT_EQ(ck.optimizer_step(), 7);
  EXPECT_EQ(ck.trident.at("note"), "snapshot");
  // Parameters first, then each parameter's exp_avg and exp_avg_sq: the order of the gathers.
  const auto specs = nn::model_tensor_specs(s.config);
  std::size_t offset = 0;
  for (const auto& spec : specs) {
    std::vector<float> got(static_cast<std::size_t>(shape_numel(spec.shape)));
    ck.read_param(spec.name, spec.shape, got.data());
    for (std::size_t j = 0; j < got.size(); ++j) ASSERT_EQ(got[j], s.values[offset + j]) << spec.name;
    offset += got.size();
  }
  ASSERT_TRUE(ck.optimizer.has_value());
  for (const auto& spec : specs) {
    for (int kind = 0; kind < 2; ++kind) {
      std::vector<float> got(static_cast<std::size_t>(shape_numel(spec.shape)));
      ck.optimizer->read(kind == 0 ? ckpt::exp_avg_name(spec.name) : ckpt::exp_avg_sq_name(spec.name),
                         spec.shape, got.data());
      for (std::size_t j = 0; j < got.size(); ++j) ASSERT_EQ(got[j], s.values[offset + j]) << spec.name;
      offset += got.size();
    }
  }
  EXPECT_EQ(offset, s.values.size());
  EXPECT_NO_THROW(ckpt::verify_checkpoint(written));
}

TEST(TrainSnapshot, NonFiniteSnapshotIsRefusedBeforeAnythingIsStaged) {
  test::TempDir dir;
  MemoryTracker tracker;
  train::write_snapshot(make_snapshot(tracker, 2), dir.path());
  for (const float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    train::CheckpointSnapshot s = make_snapshot(tracker, 4);
    s.values[s.values.size() - 3] = bad;  // in the last tensor's exp_avg_sq
    EXPECT_ERROR_HAS(train::write_snapshot(s, dir.path()), "not writing the checkpoint of step 4",
                     "non-finite value in ln_f.bias.exp_avg_sq", "nothing was written");
    EXPECT_EQ(entries(dir.path()), (std::vector<std::string>{"latest", "step_00000002"}));
    EXPECT_EQ(ckpt::latest_step(dir.path()), 2);
  }
}

TEST(TrainSnapshot, SnapshotOfAnotherShapeIsRefused) {
  test::TempDir dir;
  MemoryTracker tracker;
  train::CheckpointSnapshot s = make_snapshot(tracker, 3);
  s.config.n_layer = 3;
  EXPECT_ERROR_HAS(train::write_snapshot(s, dir.path()), "snapshot of step 3 holds");
  EXPECT_TRUE(entries(dir.path()).empty());
}

}  // namespace
