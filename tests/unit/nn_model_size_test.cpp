// Model sizes: the parameter count in checked 64-bit arithmetic (presets exact, overflow an
// error), parameter registration linear in the number of tensors (a hashed name index, not a
// scan per add), and the construction-free memory bound of train/memory_check.h.
#include <gtest/gtest.h>

#include <chrono>
#include <limits>

#include "core/check.h"
#include "core/memory.h"
#include "nn/model.h"
#include "nn/model_config.h"
#include "nn/parameters.h"
#include "train/memory_check.h"
#include "../support/expect_error.h"

namespace trident::nn {
namespace {

TEST(ModelSize, PresetCountsAreExact) {
  // Hugging Face's counts for GPT-2 (tied head counted once).
  EXPECT_EQ(model_preset("gpt2").num_parameters(), 124439808);
  EXPECT_EQ(model_preset("gpt2-medium").num_parameters(), 354823168);
  // And the count is what construction registers.
  const ModelConfig tiny = model_preset("tiny");
  Model m(tiny);
  int64_t registered = 0;
  for (const ParamInfo& p : m.params().infos()) registered += shape_numel(p.logical_shape);
  EXPECT_EQ(registered, tiny.num_parameters());
}

TEST(ModelSize, OverflowIsAnErrorNotAWrappedCount) {
  ModelConfig c = model_preset("tiny");
  c.n_embd = std::numeric_limits<int>::max() / 4 / 4 * 4;  // 12 C^2 fits, times n_layer does not
  c.n_layer = std::numeric_limits<int>::max();
  EXPECT_ERROR_HAS(c.num_parameters(), "more than 2^63 parameters");
  EXPECT_ERROR_HAS(c.validate(), "more than 2^63 parameters");
  c.n_layer = 1;
  c.n_embd = std::numeric_limits<int>::max() / 4 + 4;
  EXPECT_ERROR_HAS(c.validate(), "n_embd", "32-bit");
}

TEST(ModelSize, RegistrationIsLinearInTheNumberOfTensors) {
  // 100000 layers: 1.2M tensors. Registering them with a scan per name (the old duplicate
  // check) is ~7e11 string comparisons, hours; hashed it takes about a second. Construction
  // allocates nothing (the 1.3G parameters are never allocated here).
  ModelConfig c = model_preset("tiny");
  c.n_layer = 100000;
  const auto t0 = std::chrono::steady_clock::now();
  Model m(c);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(m.params().size(), 12 * 100000 + 4);  // + wte, wpe, ln_f.weight, ln_f.bias
  EXPECT_EQ(m.params().find("h.99999.mlp.c_proj.bias"), m.params().size() - 3);
  EXPECT_EQ(m.params().find("h.100000.mlp.c_proj.bias"), -1);
  EXPECT_LT(s, 60.0);
}

TEST(ModelSize, DuplicateNamesAreStillRefused) {
  ParameterSet ps;
  ps.begin_group("g");
  ParamInfo a;
  a.name = "x";
  a.logical_shape = {4};
  ps.add(a);
  EXPECT_ERROR_HAS(ps.add(a), "parameter x registered twice");
  EXPECT_EQ(ps.find("x"), 0);
}

TEST(ModelSize, MemoryLowerBoundAndAvailability) {
  const ModelConfig g = model_preset("gpt2");
  EXPECT_DOUBLE_EQ(train::lower_bound_bytes_per_rank(g, 4), 16.0 * 124439808 / 4);
  // Offloaded moments: the weights and gradients stay, 4 + 4 bytes; in bf16/fp16 the ZeRO-1/2 fp32
  // master can go to disk too, leaving the 16-bit copy and the gradients, 2 + 4; with the ZeRO-3
  // shard offloaded, the gradient shard's 4.
  EXPECT_DOUBLE_EQ(train::lower_bound_bytes_per_rank(g, 4, true), 8.0 * 124439808 / 4);
  EXPECT_DOUBLE_EQ(train::lower_bound_bytes_per_rank(g, 4, true, false, true), 6.0 * 124439808 / 4);
  EXPECT_DOUBLE_EQ(train::lower_bound_bytes_per_rank(g, 4, true, true, true), 4.0 * 124439808 / 4);
  EXPECT_DOUBLE_EQ(train::lower_bound_bytes_per_rank(g, 4, false, false, true), 16.0 * 124439808 / 4);
  // 16-bit gradients (--grad-dtype): 2 bytes of the gradients' 4, with or without offload.
  EXPECT_DOUBLE_EQ(train::lower_bound_bytes_per_rank(g, 4, false, false, true, true), 14.0 * 124439808 / 4);
  EXPECT_DOUBLE_EQ(train::lower_bound_bytes_per_rank(g, 4, true, false, true, true), 4.0 * 124439808 / 4);
  EXPECT_DOUBLE_EQ(train::lower_bound_bytes_per_rank(g, 4, true, true, true, true), 2.0 * 124439808 / 4);
  const auto avail = train::available_memory_bytes();
  ASSERT_TRUE(avail.has_value()) << "Linux has /proc/meminfo";
  EXPECT_GT(*avail, 0.0);
}

}  // namespace
}  // namespace trident::nn
