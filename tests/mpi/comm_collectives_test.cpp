// Collectives, send/recv, Work overlap, Mesh groups, debug-mode mismatch and watchdog, run
// on several world sizes under mpirun.
// ranks: 1 2 3 4
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <thread>
#include <vector>

#include "comm/communicator.h"
#include "comm/mesh.h"
#include "comm/mpi_backend.h"
#include "comm/runtime.h"
#include "core/check.h"
#include "mpi_gtest_main.h"

namespace trident::comm {
namespace {

// Tests must never hang: any wait past 30 s aborts the whole job.
CommOptions test_options() { return test::aborting_after(30.0); }

std::unique_ptr<Communicator> make_world() {
  return make_mpi_communicator(MPI_COMM_WORLD, "world", test_options());
}

std::vector<int64_t> sizes_for(int n) {
  return {0, 1, 7, 3 * n + 1, (int64_t{1} << 20) + 3};
}

// Small integers so fp32 sums are exact.
float value(int rank, int64_t i) { return static_cast<float>(rank + 1 + i % 7); }
float sum_over_ranks(int n, int64_t i) {
  return static_cast<float>(n * (n + 1) / 2 + n * (i % 7));
}

TEST(Comm, AllreduceSumAvgMaxOverSizes) {
  auto w = make_world();
  const int n = w->size(), r = w->rank();
  for (int64_t count : sizes_for(n)) {
    std::vector<float> buf(count);
    for (int64_t i = 0; i < count; ++i) buf[i] = value(r, i);
    w->allreduce(std::span(buf)).wait();
    for (int64_t i = 0; i < count; ++i) {
      ASSERT_EQ(buf[i], sum_over_ranks(n, i)) << "count " << count << " i " << i;
    }
    for (int64_t i = 0; i < count; ++i) buf[i] = value(r, i);
    w->allreduce(std::span(buf), ReduceOp::kAvg).wait();
    for (int64_t i = 0; i < count; ++i) {
      ASSERT_NEAR(buf[i], sum_over_ranks(n, i) / n, 1e-6f) << "count " << count;
    }
    for (int64_t i = 0; i < count; ++i) buf[i] = value(r, i);
    w->allreduce(std::span(buf), ReduceOp::kMax).wait();
    for (int64_t i = 0; i < count; ++i) ASSERT_EQ(buf[i], value(n - 1, i));
  }
}

TEST(Comm, AllreduceIntegerAndBytes) {
  auto w = make_world();
  const int n = w->size(), r = w->rank();
  std::vector<int32_t> ints(5, r);
  w->allreduce(std::span(ints)).wait();
  for (int32_t v : ints) EXPECT_EQ(v, n * (n - 1) / 2);
  std::vector<uint8_t> bytes(3, static_cast<uint8_t>(r));
  w->allreduce(std::span(bytes), ReduceOp::kMax).wait();
  for (uint8_t v : bytes) EXPECT_EQ(v, n - 1);
  EXPECT_THROW(w->allreduce(std::span(ints), ReduceOp::kAvg), Error);
}

TEST(Comm, ReduceScatterEqualChunks) {
  auto w = make_world();
  const int n = w->size(), r = w->rank();
  for (int64_t chunk : {int64_t{0}, int64_t{1}, int64_t{5}, int64_t{1} << 18}) {
    std::vector<float> in(n * chunk), out(chunk, -1.0f);
    for (int64_t i = 0; i < n * chunk; ++i) in[i] = static_cast<float>(r + i % 1000);
    w->reduce_scatter(std::span<const float>(in), std::span(out)).wait();
    for (int64_t j = 0; j < chunk; ++j) {
      const int64_t i = r * chunk + j;
      ASSERT_EQ(out[j], static_cast<float>(n * (i % 1000) + n * (n - 1) / 2)) << chunk;
    }
  }
  std::vector<float> in(n * 3 + 1), out(3);
  EXPECT_THROW(w->reduce_scatter(std::span<const float>(in), std::span(out)), Error);
}

TEST(Comm, ReduceScatterVariableChunks) {
  auto w = make_world();
  const int n = w->size(), r = w->rank();
  for (int64_t total : sizes_for(n)) {
    auto counts = chunk_counts(total, n);
    auto offsets = chunk_offsets(counts);
    std::vector<float> in(total), out(counts[r]);
    for (int64_t i = 0; i < total; ++i) in[i] = value(r, i);
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg}) {
      w->reduce_scatter_v(std::span<const float>(in), std::span(out),
                          std::span<const int64_t>(counts), op).wait();
      for (int64_t j = 0; j < counts[r]; ++j) {
        const float expect = sum_over_ranks(n, offsets[r] + j) / (op == ReduceOp::kAvg ? n : 1);
        ASSERT_NEAR(out[j], expect, 1e-6f) << "total " << total;
      }
    }
  }
}

TEST(Comm, AllGatherEqualAndInPlace) {
  auto w = make_world();
  const int n = w->size(), r = w->rank();
  for (int64_t chunk : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{1} << 18}) {
    std::vector<float> in(chunk), out(n * chunk, -1.0f);
    for (int64_t j = 0; j < chunk; ++j) in[j] = value(r, j);
    w->all_gather(std::span<const float>(in), std::span(out)).wait();
    for (int q = 0; q < n; ++q) {
      for (int64_t j = 0; j < chunk; ++j) ASSERT_EQ(out[q * chunk + j], value(q, j));
    }
    // In place: my chunk already sits at its offset in the output.
    std::vector<float> buf(n * chunk, -1.0f);
    for (int64_t j = 0; j < chunk; ++j) buf[r * chunk + j] = value(r, j);
    std::span<const float> mine(buf.data() + r * chunk, chunk);
    w->all_gather(mine, std::span(buf)).wait();
    EXPECT_EQ(buf, out);
  }
}

TEST(Comm, AllGatherVariableChunks) {
  auto w = make_world();
  const int n = w->size(), r = w->rank();
  for (int64_t total : sizes_for(n)) {
    auto counts = chunk_counts(total, n);
    auto offsets = chunk_offsets(counts);
    std::vector<float> in(counts[r]), out(total, -1.0f);
    for (int64_t j = 0; j < counts[r]; ++j) in[j] = static_cast<float>(offsets[r] + j);
    w->all_gather_v(std::span<const float>(in), std::span(out),
                    std::span<const int64_t>(counts)).wait();
    for (int64_t i = 0; i < total; ++i) ASSERT_EQ(out[i], static_cast<float>(i)) << total;
  }
}

// Element j of what rank `from` sends rank `to`: small integers, exact in fp32.
float a2a_value(int from, int to, int64_t j) { return static_cast<float>(from * 10000 + to * 100 + j % 97); }

TEST(Comm, AllToAllEqualChunks) {
  auto w = make_world();
  const int n = w->size(), r = w->rank();
  for (int64_t chunk : {int64_t{0}, int64_t{1}, int64_t{5}, int64_t{1} << 18}) {
    std::vector<float> in(n * chunk), out(n * chunk, -1.0f);
    for (int q = 0; q < n; ++q) {
      for (int64_t j = 0; j < chunk; ++j) in[q * chunk + j] = a2a_value(r, q, j);
    }
    w->all_to_all(std::span<const float>(in), std::span(out)).wait();
    for (int s = 0; s < n; ++s) {
      for (int64_t j = 0; j < chunk; ++j) ASSERT_EQ(out[s * chunk + j], a2a_value(s, r, j)) << chunk;
    }
  }
  std::vector<float> in(n * 3 + 1), out(n * 3 + 1);
  if (n > 1) {
    EXPECT_THROW(w->all_to_all(std::span<const float>(in), std::span(out)), Error);
  }
}

// Rank `from` sends rank `to` this many elements: zeros, ones and a large block, never symmetric.
int64_t a2a_count(int from, int to, int round) {
  const int64_t c = (from * 3 + to * 5 + round) % 4;
  return c == 3 ? (int64_t{1} << 16) + from : c;
}

TEST(Comm, AllToAllVariableCountsExchangedFirst) {
  auto w = make_world();
  const int n = w->size(), r = w->rank();
  for (int round = 0; round < 4; ++round) {
    // As a caller does: its own send counts, the receive counts learned by an all_to_all.
    std::vector<int64_t> send(n), recv(n, -1);
    for (int q = 0; q < n; ++q) send[q] = a2a_count(r, q, round);
    w->all_to_all(std::span<const int64_t>(send), std::span(recv)).wait();
    for (int s = 0; s < n; ++s) ASSERT_EQ(recv[s], a2a_count(s, r, round));
    std::vector<float> in, out(std::accumulate(recv.begin(), recv.end(), int64_t{0}), -1.0f);
    for (int q = 0; q < n; ++q) {
      for (int64_t j = 0; j < send[q]; ++j) in.push_back(a2a_value(r, q, j));
    }
    w->all_to_all_v(std::span<const float>(in), std::span<const int64_t>(send), std::span(out),
                    std::span<const int64_t>(recv)).wait();
    int64_t at = 0;
    for (int s = 0; s < n; ++s) {
      for (int64_t j = 0; j < recv[s]; ++j, ++at) ASSERT_EQ(out[at], a2a_value(s, r, j)) << "round " << round;
    }
  }
  // Buffers that do not match the counts are refused before anything is sent.
  std::vector<int64_t> ones(n, 1);
  std::vector<float> small(n - 1), out(n);
  EXPECT_THROW(w->all_to_all_v(std::span<const float>(small), std::span<const int64_t>(ones), std::span(out),
                               std::span<const int64_t>(ones)), Error);
}

TEST(Comm, DebugModeNamesAllToAllCountMismatch) {
  auto w = make_world();
  const int n = w->size(), r = w->rank();
  if (n == 1) GTEST_SKIP() << "needs 2 ranks";
  w->set_debug(true);
  // Rank 1 expects 3 elements from rank 0, which sends it 2; everyone else agrees.
  std::vector<int64_t> send(n, 2), recv(n, 2);
  if (r == 1) recv[0] = 3;
  std::vector<float> in(2 * n, 1.0f), out(static_cast<std::size_t>(std::accumulate(recv.begin(), recv.end(), int64_t{0})));
  std::string message;
  try {
    w->all_to_all_v(std::span<const float>(in), std::span<const int64_t>(send), std::span(out),
                    std::span<const int64_t>(recv)).wait();
  } catch (const Error& e) {
    message = e.what();
  }
  EXPECT_NE(message.find("rank 0 sends 2 elements to rank 1 but that rank expects 3"), std::string::npos)
      << message;
  // The group stays usable.
  std::vector<float> one(1, 1.0f);
  w->allreduce(std::span(one)).wait();
  EXPECT_EQ(one[0], static_cast<float>(n));
}

TEST(Comm, BroadcastFromEveryRoot) {
  auto w = make_world();
  const int n = w->size(), r = w->rank();
  for (int root = 0; root < n; ++root) {
    for (int64_t count : sizes_for(n)) {
      std::vector<float> buf(count, r == root ? 0.0f : -1.0f);
      if (r == root) for (int64_t i = 0; i < count; ++i) buf[i] = value(root, i);
      w->broadcast(std::span(buf), root).wait();
      for (int64_t i = 0; i < count; ++i) ASSERT_EQ(buf[i], value(root, i));
    }
  }
  std::vector<uint64_t> h(1, r == 0 ? 0xabcdef0123456789ull : 0);
  w->broadcast(std::span(h), 0).wait();
  EXPECT_EQ(h[0], 0xabcdef0123456789ull);
  w->barrier().wait();
}

// Overlap, as the training step relies on it: an issued collective completes while the issuing
// thread only computes (no wait(), test() or other MPI call of its own), because the group's
// worker thread runs it. Made deterministic on np > 1: rank 0 issues its part only after every
// other rank has issued, computed a chunk and seen its Work still outstanding (it cannot have
// completed: rank 0 had not joined), so those ranks provably compute with the collective in
// flight. Each rank then computes until is_completed() turns true (a 60 s cap fails the test
// instead of hanging), and the result is right. A non-blocking MPI_Iallreduce without test()
// calls would never complete in that loop (bench/comm's overlap section measures this).
TEST(Comm, WorkOverlapsComputation) {
  auto w = make_world();
  const int n = w->size(), r = w->rank();
  const int64_t count = int64_t{1} << 20;
  std::vector<float> buf(count);
  for (int64_t i = 0; i < count; ++i) buf[i] = value(r, i);
  std::vector<float> other(1 << 14, 1.0f);
  auto compute_chunk = [&] {
    for (float& x : other) x = x * 0.999f + 0.5f;
  };
  int32_t go = 1;
  Work work;
  if (r == 0) {
    for (int peer = 1; peer < n; ++peer) w->recv(std::span<int32_t>(&go, 1), peer, 11).wait();
    work = w->allreduce(std::span(buf));
  } else {
    work = w->allreduce(std::span(buf));
    compute_chunk();
    EXPECT_FALSE(work.is_completed()) << "completed before rank 0 issued its part";
    w->send(std::span<const int32_t>(&go, 1), 0, 11).wait();
  }
  int64_t chunks = 0;
  const auto start = std::chrono::steady_clock::now();
  while (!work.is_completed() && std::chrono::steady_clock::now() - start < std::chrono::seconds(60)) {
    compute_chunk();  // the caller never enters MPI here
    ++chunks;
  }
  ASSERT_TRUE(work.is_completed()) << "the allreduce did not progress while this rank computed (" << chunks
                                   << " chunks, 60 s)";
  if (n > 1 && r == 1) std::printf("[np %d] rank 1 computed %lld chunks with the allreduce in flight\n", n,
                                   static_cast<long long>(chunks));
  EXPECT_TRUE(std::isfinite(other[7]) && other[7] > 1.0f);  // the compute ran (x -> 500)
  EXPECT_TRUE(work.test());
  work.wait();  // a second wait on a finished Work is fine
  for (int64_t i = 0; i < count; i += 997) ASSERT_EQ(buf[i], sum_over_ranks(n, i));
  w->barrier().wait();

  // Several outstanding operations, waited in reverse order.
  std::vector<std::vector<float>> bufs(4, std::vector<float>(1000, static_cast<float>(r)));
  std::vector<Work> works;
  for (auto& b : bufs) works.push_back(w->allreduce(std::span(b)));
  for (int i = 3; i >= 0; --i) works[i].wait();
  for (auto& b : bufs) EXPECT_EQ(b[999], static_cast<float>(n * (n - 1) / 2));
  EXPECT_EQ(w->collectives_issued(), 6u);  // with the barrier
}

TEST(Comm, SendRecvRing) {
  auto w = make_world();
  const int n = w->size(), r = w->rank();
  if (n == 1) GTEST_SKIP() << "needs 2 ranks";
  const int next = (r + 1) % n, prev = (r + n - 1) % n;
  for (int64_t count : {int64_t{0}, int64_t{1}, int64_t{1} << 20}) {
    std::vector<float> out(count, static_cast<float>(r)), in(count, -1.0f);
    // Both sides post the send first: non-blocking, so no deadlock.
    Work s = w->send(std::span<const float>(out), next, 7);
    Work rv = w->recv(std::span(in), prev, 7);
    rv.wait();
    s.wait();
    for (int64_t i = 0; i < count; i += 4099) ASSERT_EQ(in[i], static_cast<float>(prev));
  }
  // Tags keep messages apart regardless of posting order.
  std::vector<int32_t> a(1, 100 + r), b(1, 200 + r), ra(1), rb(1);
  Work s1 = w->send(std::span<const int32_t>(a), next, 1);
  Work s2 = w->send(std::span<const int32_t>(b), next, 2);
  w->recv(std::span(rb), prev, 2).wait();
  w->recv(std::span(ra), prev, 1).wait();
  s1.wait();
  s2.wait();
  EXPECT_EQ(ra[0], 100 + prev);
  EXPECT_EQ(rb[0], 200 + prev);
}

struct Sizes {
  int pp, dp, tp;
};
std::vector<Sizes> layouts(int n) {
  std::vector<Sizes> out;
  for (int pp = 1; pp <= n; ++pp)
    for (int dp = 1; dp <= n; ++dp)
      for (int tp = 1; tp <= n; ++tp)
        if (pp * dp * tp == n) out.push_back({pp, dp, tp});
  return out;
}

// Gathers the world ranks of a group's members, in group-rank order.
std::vector<int32_t> members(Communicator& g, int world_rank) {
  std::vector<int32_t> mine(1, world_rank), all(g.size());
  g.all_gather(std::span<const int32_t>(mine), std::span(all)).wait();
  return all;
}

TEST(Comm, MeshCoordinatesAndGroups) {
  int n = 0, r = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  for (const Sizes& s : layouts(n)) {
    SCOPED_TRACE(fmt::format("pp={} dp={} tp={}", s.pp, s.dp, s.tp));
    // The (pp, dp, tp) arithmetic spelled out, tp fastest: the Mesh's list of dimensions
    // must give exactly these coordinates and groups.
    auto rank_at = [&](int p, int d, int t) { return (p * s.dp + d) * s.tp + t; };
    const int ct = r % s.tp, cd = (r / s.tp) % s.dp, cp = r / (s.tp * s.dp);
    Mesh mesh(make_mpi_communicator(MPI_COMM_WORLD, "world", test_options()), MeshShape(s.pp, s.dp, s.tp));
    EXPECT_EQ(mesh.coord(kTp), ct);
    EXPECT_EQ(mesh.coord(kDp), cd);
    EXPECT_EQ(mesh.coord(kPp), cp);
    EXPECT_EQ(mesh.world().size(), n);
    EXPECT_EQ(mesh.tp().size(), s.tp);
    EXPECT_EQ(mesh.dp().size(), s.dp);
    EXPECT_EQ(mesh.pp().size(), s.pp);
    EXPECT_EQ(mesh.tp().rank(), ct);
    EXPECT_EQ(mesh.dp().rank(), cd);
    EXPECT_EQ(mesh.pp().rank(), cp);
    auto tp = members(mesh.tp(), r);
    for (int t = 0; t < s.tp; ++t) EXPECT_EQ(tp[t], rank_at(cp, cd, t));
    auto dp = members(mesh.dp(), r);
    for (int d = 0; d < s.dp; ++d) EXPECT_EQ(dp[d], rank_at(cp, d, ct));
    auto pp = members(mesh.pp(), r);
    for (int p = 0; p < s.pp; ++p) EXPECT_EQ(pp[p], rank_at(p, cd, ct));
    // Groups along different axes work concurrently.
    std::vector<float> a(100, 1.0f), b(100, 1.0f);
    Work wa = mesh.dp().allreduce(std::span(a));
    Work wb = mesh.tp().allreduce(std::span(b));
    wb.wait();
    wa.wait();
    EXPECT_EQ(a[0], static_cast<float>(s.dp));
    EXPECT_EQ(b[0], static_cast<float>(s.tp));
    // Expert parallelism out of dp, for every ep dividing dp: ep groups are runs of consecutive
    // dp ranks, edp groups the ranks with the same dp % ep.
    for (int ep = 1; ep <= s.dp; ++ep) {
      if (s.dp % ep) continue;
      Mesh m(make_mpi_communicator(MPI_COMM_WORLD, "world", test_options()), MeshShape(s.pp, s.dp, s.tp, ep));
      EXPECT_EQ(m.coord(kDp), cd);
      EXPECT_EQ(m.ep().size(), ep);
      EXPECT_EQ(m.edp().size(), s.dp / ep);
      EXPECT_EQ(m.ep().rank(), cd % ep);
      EXPECT_EQ(m.edp().rank(), cd / ep);
      auto epm = members(m.ep(), r);
      for (int q = 0; q < ep; ++q) EXPECT_EQ(epm[q], rank_at(cp, cd / ep * ep + q, ct));
      auto edpm = members(m.edp(), r);
      for (int d = 0; d < s.dp / ep; ++d) EXPECT_EQ(edpm[d], rank_at(cp, d * ep + cd % ep, ct));
      auto dpm = members(m.dp(), r);
      for (int d = 0; d < s.dp; ++d) EXPECT_EQ(dpm[d], rank_at(cp, d, ct));
    }
  }
  EXPECT_THROW(Mesh(make_mpi_communicator(MPI_COMM_WORLD, "world", test_options()), MeshShape{n, 2, 1}), Error);
  if (n % 2 == 0) {
    EXPECT_THROW(Mesh(make_mpi_communicator(MPI_COMM_WORLD, "world", test_options()), MeshShape{1, 2, n / 2, 4}), Error);
  }
}

TEST(Comm, DebugModeNamesFirstMismatch) {
  auto w = make_world();
  const int n = w->size(), r = w->rank();
  if (n == 1) GTEST_SKIP() << "needs 2 ranks";
  w->set_debug(true);
  w->barrier().wait();  // call #1, matching
  std::vector<float> twelve(12, 1.0f), ten(10, 1.0f), gathered(10 * n);
  std::string message;
  try {
    if (r == 0) {
      w->allreduce(std::span(twelve)).wait();
    } else {
      w->all_gather(std::span<const float>(ten), std::span(gathered)).wait();
    }
  } catch (const Error& e) {
    message = e.what();
  }
  EXPECT_NE(message.find(fmt::format("rank 1 called all_gather(count={}", 10 * n)),
            std::string::npos) << message;
  EXPECT_NE(message.find("as call #2 on group world while rank 0 called allreduce(count=12"),
            std::string::npos) << message;
  // The group stays usable: every rank skipped the mismatched call.
  w->allreduce(std::span(twelve)).wait();
  EXPECT_EQ(twelve[0], static_cast<float>(n));
}

TEST(Comm, WatchdogNamesRanksThatDidNotArrive) {
  auto w = make_world();
  const int n = w->size(), r = w->rank();
  if (n == 1) GTEST_SKIP() << "needs 2 ranks";
  w->barrier().wait();
  w->set_timeout(1.0);
  w->set_timeout_action(TimeoutAction::kThrow);
  const int late = n - 1;
  std::vector<float> buf(100, 1.0f);
  if (r == late) {
    // Skip the collective long enough for the others to time out, then join so they drain.
    std::this_thread::sleep_for(std::chrono::milliseconds(2500));
    w->allreduce(std::span(buf)).wait();
  } else {
    auto start = std::chrono::steady_clock::now();
    std::string message;
    Work work = w->allreduce(std::span(buf));
    try {
      work.wait();
    } catch (const Error& e) {
      message = e.what();
    }
    double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_LT(took, 2.4);
    EXPECT_GE(took, 1.0);
    EXPECT_NE(message.find("allreduce(count=100"), std::string::npos) << message;
    EXPECT_NE(message.find("on group world"), std::string::npos) << message;
    EXPECT_NE(message.find(fmt::format("ranks that did not arrive: [{}]", late)),
              std::string::npos) << message;
    work.wait(30.0);  // completes once the late rank joins
  }
  EXPECT_EQ(buf[0], static_cast<float>(n));
  w->set_timeout(30.0);
  w->barrier().wait();
}

TEST(Comm, CheckSameAcrossRanks) {
  auto w = make_world();
  const int n = w->size(), r = w->rank();
  EXPECT_NO_THROW(check_same_across_ranks(*w, "config", 0x1234));
  if (n == 1) return;
  try {
    check_same_across_ranks(*w, "config", r == 1 ? 0xbad : 0x1234);
    ADD_FAILURE() << "expected a mismatch error on rank " << r;
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("disagree on config"), std::string::npos) << m;
    EXPECT_NE(m.find("ranks [1] have 0000000000000bad"), std::string::npos) << m;
  }
}

}  // namespace
}  // namespace trident::comm

int main(int argc, char** argv) { return trident::test::run_tests_on_every_rank(argc, argv); }
