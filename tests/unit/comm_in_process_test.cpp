// The Communicator over the in-process backend (ranks as threads, comm/in_process.h): every
// collective and its _v variant at 1..5 ranks against values computed here, all_to_all_v with
// zero counts, send/recv, split, the debug-mode mismatch and the watchdog, without mpirun.
// Values are small integers, so every sum is exact and the expected values are exact too.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <numeric>
#include <string>
#include <thread>
#include <utility>

#include "comm/in_process.h"
#include "comm/mesh.h"
#include "core/check.h"

namespace trident::comm {
namespace {

CommOptions test_options() {
  CommOptions o;
  o.timeout_s = 30.0;
  o.on_timeout = TimeoutAction::kThrow;
  return o;
}

// Rank r's i-th input value.
float value(int r, int64_t i) { return static_cast<float>(100 * r + i); }
// Sum over n ranks of value(r, i).
float value_sum(int n, int64_t i) { return static_cast<float>(100 * n * (n - 1) / 2 + n * i); }

class InProcess : public ::testing::TestWithParam<int> {};

TEST_P(InProcess, Allreduce) {
  const int n = GetParam();
  run_in_process(n, [&](Communicator& w) {
    const int r = w.rank();
    EXPECT_EQ(w.size(), n);
    std::vector<float> sum(7), mx(7), avg(7);
    std::vector<int64_t> mn(7);
    for (int i = 0; i < 7; ++i) sum[i] = mx[i] = avg[i] = value(r, i), mn[i] = 100 * r + i;
    Work a = w.allreduce(std::span(sum));
    Work b = w.allreduce(std::span(mx), ReduceOp::kMax);
    Work c = w.allreduce(std::span(mn), ReduceOp::kMin);
    Work d = w.allreduce(std::span(avg), ReduceOp::kAvg);
    a.wait(), b.wait(), c.wait(), d.wait();
    for (int i = 0; i < 7; ++i) {
      EXPECT_EQ(sum[i], value_sum(n, i));
      EXPECT_EQ(mx[i], value(n - 1, i));
      EXPECT_EQ(mn[i], i);
      EXPECT_FLOAT_EQ(avg[i], value_sum(n, i) / static_cast<float>(n));
    }
    EXPECT_EQ(w.collectives_issued(), 4u);
  }, test_options());
}

TEST_P(InProcess, ReduceScatterAndV) {
  const int n = GetParam();
  run_in_process(n, [&](Communicator& w) {
    const int r = w.rank();
    const int c = 3;
    std::vector<float> in(static_cast<size_t>(n * c)), out(c);
    for (int i = 0; i < n * c; ++i) in[i] = value(r, i);
    w.reduce_scatter(std::span<const float>(in), std::span(out)).wait();
    for (int i = 0; i < c; ++i) EXPECT_EQ(out[i], value_sum(n, r * c + i)) << i;
    // Variable chunks, some empty: 2n - 1 elements over n ranks, rank 0 gets none.
    std::vector<int64_t> counts(static_cast<size_t>(n));
    for (int s = 0; s < n; ++s) counts[s] = s == 0 ? 0 : 2;
    counts[0] = n == 1 ? 3 : 0;
    const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
    const std::vector<int64_t> at = chunk_offsets(counts);
    std::vector<float> vin(static_cast<size_t>(total)), vout(static_cast<size_t>(counts[r]));
    for (int64_t i = 0; i < total; ++i) vin[i] = value(r, i);
    w.reduce_scatter_v(std::span<const float>(vin), std::span(vout), counts).wait();
    for (int64_t i = 0; i < counts[r]; ++i) EXPECT_EQ(vout[i], value_sum(n, at[r] + i)) << i;
  }, test_options());
}

TEST_P(InProcess, AllGatherAndV) {
  const int n = GetParam();
  run_in_process(n, [&](Communicator& w) {
    const int r = w.rank();
    std::vector<int32_t> mine{r, 10 * r}, all(static_cast<size_t>(2 * n));
    w.all_gather(std::span<const int32_t>(mine), std::span(all)).wait();
    for (int s = 0; s < n; ++s) EXPECT_EQ(all[2 * s + 1], 10 * s);
    // In place, and variable counts (rank s contributes s elements: rank 0 none).
    std::vector<int64_t> counts(static_cast<size_t>(n));
    std::iota(counts.begin(), counts.end(), int64_t{0});
    const std::vector<int64_t> at = chunk_offsets(counts);
    const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
    std::vector<float> out(static_cast<size_t>(total), -1.0f);
    for (int64_t i = 0; i < counts[r]; ++i) out[at[r] + i] = value(r, i);
    std::span<const float> in(out.data() + at[r], static_cast<size_t>(counts[r]));
    w.all_gather_v(in, std::span(out), counts).wait();
    for (int s = 0; s < n; ++s) {
      for (int64_t i = 0; i < counts[s]; ++i) EXPECT_EQ(out[at[s] + i], value(s, i)) << s << " " << i;
    }
  }, test_options());
}

TEST_P(InProcess, BroadcastFromEveryRootAndBarrier) {
  const int n = GetParam();
  run_in_process(n, [&](Communicator& w) {
    for (int root = 0; root < n; ++root) {
      std::vector<double> buf(5, static_cast<double>(w.rank()));
      w.broadcast(std::span(buf), root).wait();
      for (double v : buf) EXPECT_EQ(v, root);
      w.barrier().wait();
    }
  }, test_options());
}

TEST_P(InProcess, AllToAllAndVWithZeroCounts) {
  const int n = GetParam();
  run_in_process(n, [&](Communicator& w) {
    const int r = w.rank();
    std::vector<int64_t> in(static_cast<size_t>(2 * n)), out(in.size());
    for (int s = 0; s < n; ++s) in[2 * s] = 1000 * r + s, in[2 * s + 1] = -(1000 * r + s);
    w.all_to_all(std::span<const int64_t>(in), std::span(out)).wait();
    for (int s = 0; s < n; ++s) EXPECT_EQ(out[2 * s], 1000 * s + r);
    // Rank r sends (r + d) % 3 elements to rank d: zero for some pairs; counts exchanged first.
    std::vector<int64_t> send(static_cast<size_t>(n)), recv(static_cast<size_t>(n));
    for (int d = 0; d < n; ++d) send[d] = (r + d) % 3;
    w.all_to_all(std::span<const int64_t>(send), std::span(recv)).wait();
    for (int s = 0; s < n; ++s) EXPECT_EQ(recv[s], (s + r) % 3);
    const int64_t sent = std::accumulate(send.begin(), send.end(), int64_t{0});
    const int64_t got = std::accumulate(recv.begin(), recv.end(), int64_t{0});
    std::vector<float> vin, vout(static_cast<size_t>(got), -1.0f);
    for (int d = 0; d < n; ++d) {
      for (int64_t i = 0; i < send[d]; ++i) vin.push_back(static_cast<float>(100 * r + 10 * d + i));
    }
    ASSERT_EQ(static_cast<int64_t>(vin.size()), sent);
    w.all_to_all_v(std::span<const float>(vin), send, std::span(vout), recv).wait();
    const std::vector<int64_t> at = chunk_offsets(recv);
    for (int s = 0; s < n; ++s) {
      for (int64_t i = 0; i < recv[s]; ++i) {
        EXPECT_EQ(vout[at[s] + i], static_cast<float>(100 * s + 10 * r + i)) << s << " " << i;
      }
    }
  }, test_options());
}

TEST_P(InProcess, Bf16SumsAddInRankOrder) {
  const int n = GetParam();
  run_in_process(n, [&](Communicator& w) {
    // 1 + 2^-8 is not a bf16: each rank rounds it to 1 (nearest even), so the sum is exactly n.
    std::vector<float> buf(11, 1.0f + 1.0f / 256.0f);
    w.allreduce_bf16(std::span(buf)).wait();
    for (float v : buf) EXPECT_EQ(v, static_cast<float>(n));
  }, test_options());
}

TEST_P(InProcess, SendRecvRingAndOrder) {
  const int n = GetParam();
  if (n == 1) GTEST_SKIP() << "needs 2 ranks";
  run_in_process(n, [&](Communicator& w) {
    const int r = w.rank(), next = (r + 1) % n, prev = (r + n - 1) % n;
    std::vector<int32_t> a{r, 1}, b{r, 2}, got1(2), got2(2);
    // Two messages on one tag arrive in posting order, whichever receive is tested first.
    Work r1 = w.recv(std::span(got1), prev, 7);
    Work r2 = w.recv(std::span(got2), prev, 7);
    w.send(std::span<const int32_t>(a), next, 7).wait();
    w.send(std::span<const int32_t>(b), next, 7).wait();
    r2.wait(), r1.wait();
    EXPECT_EQ(got1, (std::vector<int32_t>{prev, 1}));
    EXPECT_EQ(got2, (std::vector<int32_t>{prev, 2}));
  }, test_options());
}

TEST_P(InProcess, SplitIntoSubGroups) {
  const int n = GetParam();
  run_in_process(n, [&](Communicator& w) {
    const int r = w.rank();
    // Even and odd ranks, ranked in reverse; rank n - 1 of an odd n opts out.
    const bool out = n % 2 == 1 && n > 1 && r == n - 1;
    auto g = w.split(out ? -1 : r % 2, -r, r % 2 ? "odd" : "even");
    if (out) {
      EXPECT_EQ(g, nullptr);
      w.barrier().wait();
      return;
    }
    ASSERT_NE(g, nullptr);
    std::vector<int> members;
    for (int s = 0; s < n; ++s) {
      if (s % 2 == r % 2 && !(n % 2 == 1 && n > 1 && s == n - 1)) members.push_back(s);
    }
    const int size = static_cast<int>(members.size());
    EXPECT_EQ(g->size(), size);
    EXPECT_EQ(g->rank(), static_cast<int>(members.end() - std::find(members.begin(), members.end(), r)) - 1);
    std::vector<int64_t> sum{r};
    g->allreduce(std::span(sum)).wait();
    EXPECT_EQ(sum[0], std::accumulate(members.begin(), members.end(), int64_t{0}));
    w.barrier().wait();  // the parent group still works
  }, test_options());
}

INSTANTIATE_TEST_SUITE_P(Ranks, InProcess, ::testing::Values(1, 2, 3, 4, 5));

TEST(InProcessComm, MeshGroupsOverThreads) {
  const MeshShape shape{2, 2, 2, 2};  // pp, dp, tp, ep
  run_in_process(shape.world(), [&](Communicator& launcher) {
    Mesh mesh(launcher.split(0, launcher.rank(), "world"), shape);
    const int r = mesh.rank(), tp = r % 2, dp = (r / 2) % 2, pp = r / 4;  // today's arithmetic
    EXPECT_EQ(mesh.tp().rank(), tp);
    EXPECT_EQ(mesh.dp().rank(), dp);
    EXPECT_EQ(mesh.pp().rank(), pp);
    EXPECT_EQ(mesh.ep().rank(), dp % 2);
    EXPECT_EQ(mesh.edp().size(), 1);
    // The dp group sums the world ranks that share (pp, tp).
    std::vector<int64_t> v{r};
    mesh.dp().allreduce(std::span(v)).wait();
    EXPECT_EQ(v[0], (pp * 2 + 0) * 2 + tp + (pp * 2 + 1) * 2 + tp);
  }, test_options());
}

// "One more name": a mesh with a fifth dimension (cp, a test-only context-parallel axis
// between ep and tp) and a compound group over it builds over the in-process world, and every
// group holds the ranks the row-major arithmetic over the five sizes says, ranked by their
// coordinate on it.
TEST(InProcessComm, MeshWithAFifthDimensionSplitsByItsName) {
  const std::vector<MeshDim> dims{{"pp", 2}, {"edp", 1}, {"ep", 2}, {"cp", 2}, {"tp", 2}};
  const MeshShape shape(dims, {{"dp", {"edp", "ep"}}, {"cp_tp", {"cp", "tp"}}});
  ASSERT_EQ(shape.world(), 16);
  run_in_process(shape.world(), [&](Communicator& launcher) {
    Mesh mesh(launcher.split(0, launcher.rank(), "world"), shape);
    const int r = mesh.rank();
    const int tp = r % 2, cp = (r / 2) % 2, ep = (r / 4) % 2, pp = r / 8;
    auto at = [](int p, int e, int c, int t) { return ((p * 2 + e) * 2 + c) * 2 + t; };
    EXPECT_EQ(mesh.coord("cp"), cp);
    EXPECT_EQ(mesh.group("cp").size(), 2);
    EXPECT_EQ(mesh.group("cp").rank(), cp);
    EXPECT_EQ(mesh.group("cp_tp").rank(), cp * 2 + tp);
    EXPECT_EQ(mesh.tp().rank(), tp);
    EXPECT_EQ(mesh.ep().rank(), ep);
    EXPECT_EQ(mesh.dp().rank(), ep);  // edp 1: dp is the ep dimension
    EXPECT_EQ(mesh.pp().rank(), pp);
    const std::vector<std::pair<std::string, std::vector<int>>> want{
        {"cp", {at(pp, ep, 0, tp), at(pp, ep, 1, tp)}},
        {"tp", {at(pp, ep, cp, 0), at(pp, ep, cp, 1)}},
        {"pp", {at(0, ep, cp, tp), at(1, ep, cp, tp)}},
        {"dp", {at(pp, 0, cp, tp), at(pp, 1, cp, tp)}},
        {"cp_tp", {at(pp, ep, 0, 0), at(pp, ep, 0, 1), at(pp, ep, 1, 0), at(pp, ep, 1, 1)}}};
    for (const auto& [name, members] : want) {
      EXPECT_EQ(shape.members(r, name), members) << name;
      // Every member's world rank, gathered over the group in group-rank order.
      std::vector<int32_t> mine{r}, all(members.size());
      mesh.group(name).all_gather(std::span<const int32_t>(mine), std::span(all)).wait();
      EXPECT_EQ(std::vector<int>(all.begin(), all.end()), members) << name;
    }
  }, test_options());
}

TEST(InProcessComm, DebugModeMismatchThrowsOnEveryRankNamingTheFirst) {
  const int n = 4;
  std::atomic<int> threw{0};
  run_in_process(n, [&](Communicator& w) {
    w.set_debug(true);
    w.barrier().wait();  // call #1, matching
    std::vector<float> twelve(12, 1.0f), ten(10, 1.0f), gathered(10 * n);
    std::string message;
    try {
      // Ranks 2 and 3 disagree with rank 0; rank 2 is the first.
      if (w.rank() < 2) w.allreduce(std::span(twelve)).wait();
      else w.all_gather(std::span<const float>(ten), std::span(gathered)).wait();
    } catch (const Error& e) {
      message = e.what();
      ++threw;
    }
    EXPECT_NE(message.find(fmt::format("rank 2 called all_gather(count={}", 10 * n)),
              std::string::npos) << message;
    EXPECT_NE(message.find("as call #2 on group world while rank 0 called allreduce(count=12"),
              std::string::npos) << message;
    w.allreduce(std::span(twelve)).wait();  // the group stays usable
    EXPECT_EQ(twelve[0], static_cast<float>(n));
  }, test_options());
  EXPECT_EQ(threw.load(), n);
}

TEST(InProcessComm, DebugModeNamesTheExchangeCountMismatch) {
  run_in_process(3, [&](Communicator& w) {
    w.set_debug(true);
    const int r = w.rank();
    // Rank 1 tells rank 2 one element; rank 2 expects two from it.
    std::vector<int64_t> send{1, 1, 1}, recv{1, 1, 1};
    if (r == 2) recv[1] = 2;
    std::vector<float> in(3), out(static_cast<size_t>(r == 2 ? 4 : 3));
    try {
      w.all_to_all_v(std::span<const float>(in), send, std::span(out), recv).wait();
      ADD_FAILURE() << "expected a count mismatch on rank " << r;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("rank 1 sends 1 elements to rank 2 but that rank "
                                           "expects 2"), std::string::npos) << e.what();
    }
  }, test_options());
}

TEST(InProcessComm, WatchdogNamesTheRankThatDidNotArrive) {
  const int n = 3, late = 1;
  run_in_process(n, [&](Communicator& w) {
    w.set_timeout(0.5);
    std::vector<float> buf(100, 1.0f);
    if (w.rank() == late) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2500));  // outside communication
      w.allreduce(std::span(buf)).wait(30.0);
    } else {
      const auto start = std::chrono::steady_clock::now();
      Work work = w.allreduce(std::span(buf));
      std::string message;
      try {
        work.wait();
      } catch (const Error& e) {
        message = e.what();
      }
      const double took =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      EXPECT_GE(took, 0.5);
      EXPECT_LT(took, 2.4);
      EXPECT_NE(message.find("allreduce(count=100"), std::string::npos) << message;
      EXPECT_NE(message.find("call #1 on group world"), std::string::npos) << message;
      EXPECT_NE(message.find(fmt::format("ranks that did not arrive: [{}]", late)),
                std::string::npos) << message;
      EXPECT_NE(message.find(fmt::format("rank {} did not answer", late)), std::string::npos)
          << message;
      work.wait(30.0);  // completes once the late rank joins
    }
    EXPECT_EQ(buf[0], static_cast<float>(n));
  }, test_options());
}

TEST(InProcessComm, RethrowsTheFailingRanksErrorAndReleasesTheOthers) {
  try {
    run_in_process(3, [&](Communicator& w) {
      if (w.rank() == 1) TRI_FAIL("rank 1 gave up");
      std::vector<float> buf(4, 1.0f);
      w.allreduce(std::span(buf)).wait();  // would wait forever for rank 1
    }, test_options());
    FAIL() << "expected rank 1's error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rank 1 gave up"), std::string::npos) << e.what();
  }
}

TEST(InProcessComm, SplitThatARankSkipsTimesOut) {
  run_in_process(2, [&](Communicator& w) {
    w.set_timeout(0.5);
    if (w.rank() == 1) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1500));
      EXPECT_NE(w.split(0, 0, "late"), nullptr);  // joins late, so rank 0's worker drains
      return;
    }
    try {
      w.split(0, 0, "late");
      ADD_FAILURE() << "expected the split to time out";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("split of group world into late did not complete "
                                           "within 0.5 s"), std::string::npos) << e.what();
    }
  }, test_options());
}

TEST(InProcessComm, BadRankCountIsRefused) {
  try {
    run_in_process(0, [](Communicator&) {});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("need at least one rank, got 0"), std::string::npos) << e.what();
  }
}

TEST(InProcessComm, RecvShorterThanTheMessageIsAnError) {
  try {
    run_in_process(2, [&](Communicator& w) {
      std::vector<int32_t> three{1, 2, 3}, two(2);
      if (w.rank() == 0) w.send(std::span<const int32_t>(three), 1).wait();
      else w.recv(std::span(two), 0).wait();
    }, test_options());
    FAIL() << "expected a truncation error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("has 12 bytes, more than the 8-byte receive buffer"),
              std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace trident::comm
