// The main() of every multi-rank gtest binary: starts MPI, runs the tests on every rank (rank 0
// prints gtest's report, other ranks only their failures, tagged with the rank), turns an
// escaped exception into a job abort, and makes every rank exit non-zero when any rank failed,
// so ctest never sees a partial pass or a hang.
#pragma once

#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdio>
#include <exception>
#include <functional>

#include "comm/communicator.h"
#include "comm/runtime.h"

namespace trident::test {

// Prints failures with the rank on ranks > 0 (rank 0 keeps gtest's normal output).
class RankFailurePrinter : public testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const testing::TestPartResult& result) override {
    if (result.failed()) {
      std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_, result.file_name(),
                   result.line_number(), result.summary());
    }
  }

 private:
  int rank_;
};

// Communicator options for tests: a watchdog that ends the whole job after `timeout_s`, so a
// hang fails the test instead of running into ctest's timeout.
inline comm::CommOptions aborting_after(double timeout_s) {
  comm::CommOptions o;
  o.timeout_s = timeout_s;
  o.on_timeout = comm::TimeoutAction::kAbort;
  return o;
}

// `setup` runs once MPI is up, before the tests; `teardown` after them, still inside MPI
// (release communicators there: they must go before MPI_Finalize).
inline int run_tests_on_every_rank(int argc, char** argv, const std::function<void()>& setup = {},
                                   const std::function<void()>& teardown = {}) {
  comm::MpiRuntime mpi(&argc, &argv);
  testing::InitGoogleTest(&argc, argv);
  if (mpi.world_rank() != 0) {
    auto& listeners = testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(mpi.world_rank()));
  }
  int failed = 0;
  try {
    if (setup) setup();
    failed = RUN_ALL_TESTS() != 0;
    if (teardown) teardown();
  } catch (const std::exception& e) {
    comm::abort_job(e.what(), 2);
  }
  int any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (any_failed && mpi.world_rank() == 0) std::fprintf(stderr, "a test failed on some rank\n");
  return any_failed;
}

}  // namespace trident::test
