// The poisoned-step policy: skip counts consecutive non-finite steps and stops at
// --max-bad-steps, a good step resets the count, stop ends the run at the first; and the two
// options parse from flags with their defaults (skip, 5).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/check.h"
#include "train/nonfinite_policy.h"
#include "train/run_config.h"
#include "../support/expect_error.h"

namespace trident::train {
namespace {

using trident::test::error_of;

parallel::StepStats good() {
  parallel::StepStats s;
  s.loss = 3.0;
  s.grad_norm = 1.0;
  return s;
}
parallel::StepStats bad() {
  parallel::StepStats s;
  s.loss = 4.0;
  s.grad_norm = std::numeric_limits<double>::quiet_NaN();
  s.skipped = true;
  return s;
}

#define EXPECT_CONTAINS(text, part) EXPECT_NE(std::string(text).find(part), std::string::npos) << (text)

TEST(NonfiniteGuard, SkipGoesOnUntilMaxBadStepsInARow) {
  NonfiniteGuard g(NonfinitePolicy::kSkip, 3);
  EXPECT_EQ(g.record(1, good()), "");
  const std::string note = g.record(2, bad());
  EXPECT_CONTAINS(note, "skipped step 2");
  EXPECT_CONTAINS(note, "loss 4");
  EXPECT_CONTAINS(note, "grad norm nan");
  EXPECT_EQ(g.consecutive_bad(), 1);
  EXPECT_NE(g.record(3, bad()), "");
  EXPECT_EQ(g.record(4, good()), "");  // a good step resets the count
  EXPECT_EQ(g.consecutive_bad(), 0);
  EXPECT_NE(g.record(5, bad()), "");
  EXPECT_NE(g.record(6, bad()), "");
  const std::string err = error_of([&] { g.record(7, bad()); });
  EXPECT_CONTAINS(err, "step 7");
  EXPECT_CONTAINS(err, "3 non-finite steps in a row (--max-bad-steps 3)");
  EXPECT_CONTAINS(err, "without writing a checkpoint");
  EXPECT_EQ(g.total_skipped(), 5);
}

TEST(NonfiniteGuard, StopEndsTheRunAtTheFirstBadStep) {
  NonfiniteGuard g(NonfinitePolicy::kStop, 5);
  EXPECT_EQ(g.record(1, good()), "");
  const std::string err = error_of([&] { g.record(2, bad()); });
  EXPECT_CONTAINS(err, "step 2");
  EXPECT_CONTAINS(err, "--on-nonfinite stop");
}

TEST(NonfiniteGuard, MaxBadStepsOneStopsAtTheFirst) {
  NonfiniteGuard g(NonfinitePolicy::kSkip, 1);
  EXPECT_CONTAINS(error_of([&] { g.record(1, bad()); }), "--max-bad-steps 1");
}

RunConfig parse(std::vector<std::string> args) {
  args.insert(args.begin(), "train");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return parse_run_config(static_cast<int>(argv.size()), argv.data());
}

TEST(NonfiniteGuard, OptionsParse) {
  const RunConfig d = parse({"--data", "x"});
  EXPECT_EQ(d.optim.on_nonfinite, NonfinitePolicy::kSkip);
  EXPECT_EQ(d.optim.max_bad_steps, 5);
  const RunConfig c = parse({"--data", "x", "--on-nonfinite", "stop", "--max-bad-steps", "2"});
  EXPECT_EQ(c.optim.on_nonfinite, NonfinitePolicy::kStop);
  EXPECT_EQ(c.optim.max_bad_steps, 2);
  EXPECT_CONTAINS(error_of([] { parse({"--data", "x", "--on-nonfinite", "ignore"}); }), "skip, stop");
  EXPECT_CONTAINS(error_of([] { parse({"--data", "x", "--max-bad-steps", "0"}); }), "max-bad-steps");
  EXPECT_CONTAINS(run_config_help(), "--on-nonfinite");
}

}  // namespace
}  // namespace trident::train
