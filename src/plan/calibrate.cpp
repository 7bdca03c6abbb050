// Concurrent calibration of the cost model under mpirun (see calibrate.h).
#include "plan/calibrate.h"

#include <algorithm>
#include <cmath>
#include <chrono>
#include <limits>
#include <thread>
#include <vector>

#include "comm/mpi_backend.h"
#include "core/check.h"
#include "core/timer.h"

namespace trident::plan {

double median_across(comm::Communicator& comm, double value) {
  std::vector<double> all(static_cast<std::size_t>(comm.size()));
  const double mine[1] = {value};
  comm.all_gather(std::span<const double>(mine, 1), std::span<double>(all)).wait();
  std::vector<double> ok;
  for (double v : all) {
    if (!std::isnan(v)) ok.push_back(v);
  }
  if (ok.empty()) return std::numeric_limits<double>::quiet_NaN();
  std::sort(ok.begin(), ok.end());
  const std::size_t n = ok.size();
  return n % 2 ? ok[n / 2] : 0.5 * (ok[n / 2 - 1] + ok[n / 2]);
}

CommTimingSync::CommTimingSync(comm::Communicator& world, int cores, int threads)
    : world_(world),
      share_(std::min(1.0, static_cast<double>(std::max(1, cores)) / (world.size() * std::max(1, threads)))) {}

void CommTimingSync::begin() { world_.barrier().wait(); }

double CommTimingSync::combine(double local_s) { return median_across(world_, local_s); }

namespace {

// Seconds per call of fn after `warm` warm-up calls: `reps` calls in kBatches batches, each
// started together, the best batch's mean. The machine may be shared with other jobs whose
// load comes and goes; the best batch is the machine as this job finds it when it is quiet,
// the state a benchmark's best round measures too.
constexpr int kBatches = 5;
template <class F>
double timed(comm::Communicator& world, int warm, int reps, F&& fn) {
  for (int i = 0; i < warm; ++i) fn();
  const int batches = std::min(kBatches, reps), per = std::max(1, reps / batches);
  double best = std::numeric_limits<double>::infinity();
  for (int b = 0; b < batches; ++b) {
    world.barrier().wait();
    Stopwatch sw;
    for (int i = 0; i < per; ++i) fn();
    best = std::min(best, sw.seconds() / per);
  }
  return best;
}

// Mean seconds per call of `reps` calls of fn by one rank alone (no barrier). For the loaded
// latencies: what they measure is how long a message waits for its peer to be scheduled,
// which is a distribution over the whole run, so the mean, not the luckiest batch.
template <class F>
double timed_alone(int reps, F&& fn) {
  Stopwatch sw;
  for (int i = 0; i < reps; ++i) fn();
  return sw.seconds() / reps;
}

}  // namespace

namespace {

// Times one pairing of the ranks: `pair_of[r]` is rank r's pair id (a lone rank has one of its
// own and allreduces with itself, so every rank runs the same number of operations and the
// pairs stay busy together). NaN on ranks outside a pair (ignored by median_across).
PairTimes measure_pairs(comm::Communicator& world, const std::vector<int>& pair_of, int64_t large_count) {
  const int rank = world.rank();
  const int my_pair = pair_of[static_cast<std::size_t>(rank)];
  MPI_Comm raw = MPI_COMM_NULL;
  MPI_Comm_split(comm::mpi_comm_of(world), my_pair, rank, &raw);
  double small = std::numeric_limits<double>::quiet_NaN(), p2p = small, large = small;
  double loaded_small = small, loaded_p2p = small;
  {
    const auto pair_owner = comm::make_mpi_communicator(raw, "plan-calibration-pair");
    comm::Communicator& pair = *pair_owner;
    MPI_Comm_free(&raw);
    std::vector<float> one(1, 1.0f);
    auto ping_pong = [&] {
      const int peer = 1 - pair.rank();
      if (pair.rank() == 0) {
        pair.send(std::span<const float>(one), peer).wait();
        pair.recv(std::span<float>(one), peer).wait();
      } else {
        pair.recv(std::span<float>(one), peer).wait();
        pair.send(std::span<const float>(one), peer).wait();
      }
    };
    const double s = timed(world, 20, 200, [&] { pair.allreduce(std::span<float>(one)).wait(); });
    double pp_s = 0;
    if (pair.size() == 2) {
      pp_s = timed(world, 20, 200, ping_pong);
    } else {
      world.barrier().wait();
    }
    // Loaded: rank 0's pair talks while every other rank computes, as a tp/pp/dp group of a
    // training job talks while the other ranks run their forward/backward: a message now
    // waits until the peer is scheduled again (ranks > cores, mpi_yield_when_idle).
    {
      MPI_Comm side = MPI_COMM_NULL;
      MPI_Comm_dup(comm::mpi_comm_of(world), &side);
      MPI_Barrier(side);
      MPI_Request done = MPI_REQUEST_NULL;
      if (my_pair == pair_of[0] && pair.size() == 2) {
        pair.allreduce(std::span<float>(one)).wait();
        constexpr int kReps = 200;
        const double ar = timed_alone(kReps, [&] { pair.allreduce(std::span<float>(one)).wait(); });
        loaded_small = ar, loaded_p2p = timed_alone(kReps, ping_pong) / 2;
        MPI_Ibarrier(side, &done);
        MPI_Wait(&done, MPI_STATUS_IGNORE);
      } else {
        MPI_Ibarrier(side, &done);
        std::vector<float> work(1 << 16, 1.0f);
        int flag = 0;
        float acc = 0;
        while (!flag) {
          for (int k = 0; k < 20; ++k) {
            for (float& w : work) w = w * 0.999f + 1e-3f;
          }
          acc += work[0];
          MPI_Test(&done, &flag, MPI_STATUS_IGNORE);
        }
        if (acc < 0) work[1] = acc;  // keep the loop
      }
      MPI_Comm_free(&side);
    }
    std::vector<float> big(static_cast<std::size_t>(large_count), 1e-3f);
    const double l = timed(world, 1, 3, [&] { pair.allreduce(std::span<float>(big)).wait(); });
    if (pair.size() == 2) small = s, p2p = pp_s / 2, large = l;
  }
  PairTimes t;
  t.allreduce_small_s = median_across(world, small);
  t.p2p_s = median_across(world, p2p);
  t.allreduce_large_s = median_across(world, large);
  t.loaded_allreduce_small_s = median_across(world, loaded_small);
  t.loaded_p2p_s = median_across(world, loaded_p2p);
  return t;
}

// CommModel for n = 2: allreduce = b / bandwidth + 2 latency. The latencies are the loaded
// ones when other ranks exist to load the cores (W > 2), the job's usual situation.
CommModel link_model(const PairTimes& t, int W, double large_bytes, double core_share) {
  CommModel m;
  const bool loaded = W > 2 && !std::isnan(t.loaded_allreduce_small_s);
  m.latency = (loaded ? t.loaded_allreduce_small_s : t.allreduce_small_s) / 2;
  m.p2p_latency = loaded ? t.loaded_p2p_s : t.p2p_s;
  const double data_s = std::max(t.allreduce_large_s - 2 * m.latency, 0.1 * t.allreduce_large_s);
  m.bandwidth = large_bytes / data_s;
  m.copy_bandwidth = m.bandwidth / std::max(1e-9, core_share);
  return m;
}

}  // namespace

CommCalibration calibrate_comm(comm::Communicator& world, double core_share, const std::vector<int>& node_of_rank) {
  const int W = world.size();
  TRI_CHECK(W >= 2, "calibrating communication needs at least 2 ranks, got {}", W);
  TRI_CHECK(node_of_rank.empty() || static_cast<int>(node_of_rank.size()) == W,
            "calibration: {} node entries for {} ranks", node_of_rank.size(), W);
  CommCalibration c;
  c.ranks = W;
  const int64_t large_count = 4 << 20;  // 16 MiB of floats
  c.large_bytes = 4.0 * static_cast<double>(large_count);
  std::vector<int> node = node_of_rank.empty() ? std::vector<int>(static_cast<std::size_t>(W), 0) : node_of_rank;
  c.multi_node = std::any_of(node.begin(), node.end(), [&](int n) { return n != node.front(); });

  // Inside a node: consecutive ranks of each node, (0,1), (2,3), ... on one node; a node's odd
  // rank out sits alone.
  std::vector<int> intra(static_cast<std::size_t>(W));
  {
    std::vector<int> seen_on_node;
    for (int r = 0; r < W; ++r) {
      const int n = node[static_cast<std::size_t>(r)];
      if (static_cast<int>(seen_on_node.size()) <= n) seen_on_node.resize(static_cast<std::size_t>(n) + 1, 0);
      const int k = seen_on_node[static_cast<std::size_t>(n)]++;
      intra[static_cast<std::size_t>(r)] = n * W + k / 2;
    }
  }
  if (c.multi_node) {
    // Across nodes: rank i with rank i + W/2 (node-major order, so on different nodes for any
    // equal split); pairs that would share a node, and the odd rank, sit alone.
    std::vector<int> inter(static_cast<std::size_t>(W));
    const int half = W / 2;
    for (int r = 0; r < W; ++r) {
      const int lo = r < half ? r : r - half;
      const bool paired = r < 2 * half && node[static_cast<std::size_t>(lo)] != node[static_cast<std::size_t>(lo + half)];
      inter[static_cast<std::size_t>(r)] = paired ? lo : W + r;
    }
    c.inter = measure_pairs(world, inter, large_count);
    c.inter_model = link_model(c.inter, W, c.large_bytes, core_share);
  }
  // Inside a node after the links across nodes are up: a process with open TCP connections
  // polls them on every progress call, which the job's ranks pay on their intra-node messages.
  c.intra = measure_pairs(world, intra, large_count);
  c.model = link_model(c.intra, W, c.large_bytes, core_share);
  if (!c.multi_node) c.inter_model = c.model;
  std::vector<float> one(1, 1.0f);
  c.world_allreduce_small_s = median_across(
      world, timed(world, 20, 200, [&] { world.allreduce(std::span<float>(one)).wait(); }));
  return c;
}

namespace {

// `passes` sweeps of single-thread arithmetic over a cache-resident buffer; returns seconds.
double spin_work(std::vector<float>& buf, int passes) {
  Stopwatch sw;
  for (int k = 0; k < passes; ++k) {
    for (float& w : buf) w = w * 0.999f + 1e-3f;
  }
  return sw.seconds();
}

}  // namespace

WaitCalibration calibrate_wait_cpu(comm::Communicator& world, int cores, int threads) {
  const int W = world.size(), rank = world.rank();
  WaitCalibration c;
  std::vector<float> buf(1 << 16, 1.0f);
  // Passes for ~0.2 s alone (rank 0 decides; everyone learns it).
  int passes[1] = {0};
  if (rank == 0) {
    const double t = spin_work(buf, 50);
    passes[0] = std::max(1, static_cast<int>(50 * 0.2 / std::max(t, 1e-6)));
  }
  world.broadcast(std::span<int>(passes, 1), 0).wait();
  float token[1] = {0};
  double times[2] = {0, 0};
  for (int trial = 0; trial < 2; ++trial) {
    world.barrier().wait();
    if (rank == 0) {
      spin_work(buf, std::max(1, passes[0] / 10));  // warm up
      const double t = spin_work(buf, passes[0]);
      times[trial] = t;
      for (int r = 1; r < W; ++r) world.send(std::span<const float>(token, 1), r, 7).wait();
    } else if (trial == 0) {
      // (a) out of the way: sleep until rank 0 is done (~0.22 s alone), then take its message.
      std::this_thread::sleep_for(std::chrono::milliseconds(600));
      world.recv(std::span<float>(token, 1), 0, 7).wait();  // spins only at the end
    } else {
      world.recv(std::span<float>(token, 1), 0, 7).wait();  // (b) waiting the whole time
    }
  }
  double bc[2] = {times[0], times[1]};
  world.broadcast(std::span<double>(bc, 2), 0).wait();
  c.alone_s = bc[0], c.with_waiters_s = bc[1];
  const double s = c.with_waiters_s / std::max(c.alone_s, 1e-9);
  c.wait_cpu = std::clamp((s * cores - threads) / std::max(1, W - 1), 0.0, 1.0);
  if (s < 1.05) c.wait_cpu = 0;  // no measurable slowdown: waiting costs nothing
  return c;
}

}  // namespace trident::plan
