// A quantized checkpoint reads back bit for bit what was written (packed weights, scales,
// offsets, the fp32 rest and the config), for int8 and q4, GPT-2 and Llama.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <unistd.h>

#include "core/memory.h"
#include "nn/model.h"
#include "quant/quantized_model.h"

namespace trident::quant {
namespace {

void expect_round_trip(const nn::ModelConfig& cfg, Format format, int group) {
  MemoryTracker tracker;
  nn::Model model(cfg);
  model.allocate(tracker);
  model.params().initialize(7);
  const nn::ParameterSet& ps = model.params();
  const QuantizedModel m = build_quantized_model(
      cfg,
      [&](const nn::ParamDecl& d, float* dst) {
        std::memcpy(dst, ps.data(ps.find(d.name)), static_cast<std::size_t>(shape_numel(d.shape)) * sizeof(float));
      },
      format, group);
  const auto dir = std::filesystem::temp_directory_path() /
                   ("trident_quant_rt_" + std::to_string(::getpid()) + "_" + std::string(format_name(format)));
  std::filesystem::remove_all(dir);
  save_quantized(m, dir.string());
  ASSERT_TRUE(is_quantized_checkpoint(dir.string()));
  const QuantizedModel r = load_quantized(dir.string());
  std::filesystem::remove_all(dir);
  EXPECT_EQ(r.format, format);
  EXPECT_EQ(r.group, m.group);
  EXPECT_EQ(r.config.describe(), cfg.describe());
  EXPECT_EQ(r.tensors, m.tensors);
  ASSERT_EQ(r.matrices.size(), m.matrices.size());
  for (const auto& [name, q] : m.matrices) {
    const QuantMatrix& g = r.matrix(name);
    EXPECT_EQ(g.rows, q.rows) << name;
    EXPECT_EQ(g.cols, q.cols) << name;
    EXPECT_EQ(g.q8, q.q8) << name;
    EXPECT_EQ(g.q4, q.q4) << name;
    EXPECT_EQ(g.scale, q.scale) << name;
    EXPECT_EQ(g.offset, q.offset) << name;
    EXPECT_EQ(g.row_sum, q.row_sum) << name;
  }
}

TEST(QuantCheckpoint, Int8Gpt2) { expect_round_trip(nn::model_preset("tiny"), Format::kInt8, 0); }
TEST(QuantCheckpoint, Q4Gpt2) { expect_round_trip(nn::model_preset("tiny"), Format::kQ4, 32); }
TEST(QuantCheckpoint, Int8Llama) { expect_round_trip(nn::model_preset("llama-tiny"), Format::kInt8, 0); }

}  // namespace
}  // namespace trident::quant
