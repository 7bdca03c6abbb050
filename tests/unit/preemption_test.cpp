// The stop-signal list (names, numbers, none, refusals) and the handler: a raised signal is
// recorded, not acted on, and the previous handler comes back when the handler object goes.
#include "train/preemption.h"

#include <gtest/gtest.h>

#include <csignal>
#include <vector>

#include "../support/expect_error.h"

namespace trident::train {
namespace {

TEST(PreemptSignals, NamesNumbersAndNone) {
  EXPECT_EQ(parse_preempt_signals("TERM,INT,USR1"), (std::vector<int>{SIGTERM, SIGINT, SIGUSR1}));
  EXPECT_EQ(parse_preempt_signals(" sigterm , usr2 "), (std::vector<int>{SIGTERM, SIGUSR2}));
  EXPECT_EQ(parse_preempt_signals("15,TERM"), (std::vector<int>{SIGTERM}));  // duplicates once
  EXPECT_TRUE(parse_preempt_signals("none").empty());
  EXPECT_TRUE(parse_preempt_signals("").empty());
  EXPECT_EQ(signal_name(SIGTERM), "SIGTERM");
  EXPECT_EQ(signal_name(SIGUSR1), "SIGUSR1");
}

TEST(PreemptSignals, RefusesWhatCannotBeCaught) {
  EXPECT_ERROR_HAS(parse_preempt_signals("TERM,BOGUS"), "--preempt-signals", "'BOGUS'", "USR1");
  EXPECT_ERROR_HAS(parse_preempt_signals("KILL"), "--preempt-signals", "'KILL'");
  EXPECT_ERROR_HAS(parse_preempt_signals("9"), "'9'");
  EXPECT_ERROR_HAS(parse_preempt_signals("TERM,,INT"), "''");
}

TEST(PreemptionHandler, RecordsTheFirstSignalAndRestoresThePreviousHandler) {
  ASSERT_NE(std::signal(SIGUSR2, SIG_IGN), SIG_ERR);
  {
    PreemptionHandler handler({SIGUSR2});
    EXPECT_EQ(handler.local_signal(), 0);
    ASSERT_EQ(std::raise(SIGUSR2), 0);  // handled synchronously by this thread
    EXPECT_EQ(handler.local_signal(), SIGUSR2);
  }
  struct sigaction now {};
  ASSERT_EQ(::sigaction(SIGUSR2, nullptr, &now), 0);
  EXPECT_EQ(now.sa_handler, SIG_IGN);
  PreemptionHandler fresh({SIGUSR2});
  EXPECT_EQ(fresh.local_signal(), 0);  // a new handler starts with no stop requested
}

}  // namespace
}  // namespace trident::train
