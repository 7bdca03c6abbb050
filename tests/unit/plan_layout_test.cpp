// Planner layout enumeration: counts for world 8 on the tiny preset, rejected layouts with
// their reasons, bad requests.
#include <gtest/gtest.h>

#include <algorithm>

#include "core/check.h"
#include "plan/layout.h"
#include "../support/expect_error.h"

namespace trident::plan {
namespace {

using trident::test::error_of;

PlanRequest tiny_request(int world, int64_t batch, int M) {
  PlanRequest r;
  r.model = nn::model_preset("tiny");  // 8 layers, 4 heads, 32 channels
  r.world = world;
  r.batch_size = batch;
  r.seq_len = 16;
  r.micro_batches = M;
  return r;
}


TEST(PlanLayout, World8TinyCountsByHand) {
  // world 8, batch 16, M = 2. (pp, tp, dp): tp 8 fails n_head 4. Valid:
  //   pp1: tp1/dp8, tp2/dp4, tp4/dp2, each ZeRO 0-3               -> 12
  //   pp2: tp1/dp4, tp2/dp2 (ZeRO 0-3), tp4/dp1 (ZeRO 0) x gpipe, 1f1b, interleaved V=2
  //                                                               -> 27
  //   pp4: tp1/dp2 (4 ZeRO), tp2/dp1 x gpipe, 1f1b (interleaved: M % pp != 0) -> 10
  //   pp8: gpipe, 1f1b (interleaved rejected)                     -> 2
  const std::vector<Candidate> all = enumerate_layouts(tiny_request(8, 16, 2));
  const auto valid = std::count_if(all.begin(), all.end(), [](const Candidate& c) { return c.valid; });
  EXPECT_EQ(valid, 51);
  EXPECT_EQ(static_cast<int64_t>(all.size()) - valid, 4);
  for (const Candidate& c : all) {
    EXPECT_EQ(c.layout.world(), 8);
    if (c.valid) {
      EXPECT_TRUE(c.reason.empty());
      EXPECT_EQ(c.layout.micro_batches, 2);
      if (c.layout.dp == 1) { EXPECT_EQ(c.layout.zero, 0); }
      if (c.layout.pp == 1) { EXPECT_EQ(c.layout.virtual_stages, 1); }
      EXPECT_EQ(4 % c.layout.tp, 0);
      continue;
    }
    if (c.layout.tp == 8) {
      EXPECT_NE(c.reason.find("n_head"), std::string::npos) << c.reason;
    } else {
      EXPECT_EQ(c.layout.schedule, pp::ScheduleKind::kInterleaved);
      EXPECT_GE(c.layout.pp, 4);
      EXPECT_FALSE(c.reason.empty());
    }
  }
}

TEST(PlanLayout, EveryDivisorOfTheRankBatchIsTriedWhenMIsOpen) {
  // world 1, batch 12: M in {1, 2, 3, 4, 6, 12}; one layout each.
  const std::vector<Candidate> all = enumerate_layouts(tiny_request(1, 12, 0));
  ASSERT_EQ(all.size(), 6u);
  for (const Candidate& c : all) EXPECT_TRUE(c.valid);
  EXPECT_EQ(all.back().layout.micro_batches, 12);
}

TEST(PlanLayout, BatchThatDoesNotSplitOverDpIsRejected) {
  const std::vector<Candidate> all = enumerate_layouts(tiny_request(8, 4, 1));
  bool saw = false;
  for (const Candidate& c : all) {
    if (c.layout.dp == 8) {
      EXPECT_FALSE(c.valid);
      EXPECT_NE(c.reason.find("does not split over dp 8"), std::string::npos) << c.reason;
      saw = true;
    }
  }
  EXPECT_TRUE(saw);
  // A fixed M that does not divide the rank's rows.
  for (const Candidate& c : enumerate_layouts(tiny_request(2, 6, 4))) {
    EXPECT_FALSE(c.valid) << c.layout.train_flags();
  }
}

TEST(PlanLayout, MorePipelineStagesThanLayersAreRejected) {
  PlanRequest r = tiny_request(16, 16, 1);
  r.model.n_layer = 4;
  for (const Candidate& c : enumerate_layouts(r)) {
    if (c.layout.pp > 4) {
      EXPECT_FALSE(c.valid);
      EXPECT_NE(c.reason.find("layers"), std::string::npos) << c.reason;
    }
  }
}

TEST(PlanLayout, TrainFlagsNameTheLayout) {
  Layout l;
  l.dp = 2, l.tp = 2, l.pp = 2, l.zero = 1, l.micro_batches = 4;
  l.schedule = pp::ScheduleKind::kInterleaved, l.virtual_stages = 2;
  EXPECT_EQ(l.train_flags(),
            "--dp 2 --tp 2 --pp 2 --zero 1 --schedule interleaved --micro-batches 4 --virtual-stages 2");
  EXPECT_EQ(l.shape(), "dp2 tp2 pp2");
  EXPECT_EQ(l.schedule_name(), "interleaved V=2");
}

TEST(PlanLayout, BadRequestsSayWhatToChange) {
  EXPECT_NE(error_of([] { enumerate_layouts(tiny_request(0, 8, 0)); }).find("world size"), std::string::npos);
  EXPECT_NE(error_of([] { enumerate_layouts(tiny_request(8, 0, 0)); }).find("batch size"), std::string::npos);
  PlanRequest r = tiny_request(8, 8, 0);
  r.seq_len = 1000;
  EXPECT_NE(error_of([&] { enumerate_layouts(r); }).find("n_positions"), std::string::npos);
  EXPECT_NE(error_of([] { nn::model_preset("gpt5"); }).find("known presets"), std::string::npos);
}

}  // namespace
}  // namespace trident::plan

namespace trident::plan {
namespace {

// --grad-dtype bf16: the engine refuses ZeRO 0-1 under a pipeline (their 16-bit flat gradients
// keep one layer group's fp32 working buffer, which interleaved backwards would need per
// micro-batch), so those layouts are listed as not valid with the reason, and a one-dp-rank
// pipeline gets ZeRO 2 and 3 instead of ZeRO 0 (without 16-bit gradients it gets ZeRO 0 only).
TEST(PlanLayout, SixteenBitGradientsUnderAPipelineNeedZeroTwoOrThree) {
  PlanRequest r = tiny_request(4, 8, 0);
  r.precision = kernels::Precision::kBf16;
  r.grad_dtype = parallel::GradDType::kBf16;
  int pp_zero01 = 0, rejected = 0, dp1_pp_zero2 = 0;
  for (const Candidate& c : enumerate_layouts(r)) {
    const Layout& l = c.layout;
    if (l.pp > 1 && l.zero < 2) {
      ++pp_zero01;
      EXPECT_FALSE(c.valid) << l.shape() << " zero " << l.zero;
      if (!c.valid && c.reason.find("--grad-dtype bf16 at ZeRO") != std::string::npos) ++rejected;
    }
    if (l.pp > 1 && l.dp == 1 && l.zero == 2 && c.valid) ++dp1_pp_zero2;
  }
  EXPECT_GT(pp_zero01, 0);
  EXPECT_GT(rejected, 0);  // (the others are rejected earlier, for their schedule)
  EXPECT_GT(dp1_pp_zero2, 0);
  r.grad_dtype = parallel::GradDType::kFp32;
  for (const Candidate& c : enumerate_layouts(r)) {
    EXPECT_FALSE(c.layout.pp > 1 && c.layout.dp == 1 && c.layout.zero == 2) << "fp32: one dp rank plans ZeRO 0 only";
  }
}

}  // namespace
}  // namespace trident::plan
