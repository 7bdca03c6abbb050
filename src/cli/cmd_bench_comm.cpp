// `trident bench comm` (also build/bench/comm): nccl-tests style bandwidth of Trident's
// collectives against raw blocking MPI on the same buffers in the same run, plus an overlap
// measurement that backs the worker-thread design in comm/communicator.h.
//
//   algbw = bytes / time;  busbw = algbw * 2(n-1)/n (allreduce), * (n-1)/n (reduce_scatter,
//   all_gather, all_to_all, all_to_all_v); bytes = the full buffer (allreduce), the input
//   (reduce_scatter, all_to_all, all_to_all_v: what each rank sends, its own chunk included),
//   the output (all_gather). all_to_all_v (the MoE token exchange, nn/moe_mlp.h) sends uneven
//   chunks: rank r gives rank s u * (1 + (r + s) % n) elements, so every rank sends and receives
//   the same total while each pair differs, against MPI_Alltoallv with the same counts. Times are per operation, the slowest rank's, best of three interleaved rounds
//   (the machine may be shared; the best round is the least disturbed).
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "comm/communicator.h"
#include "comm/mpi_backend.h"
#include "comm/runtime.h"
#include "core/check.h"

namespace trident::cli {
namespace {

using comm::Communicator;

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int64_t parse_bytes(const char* text) {
  char* end = nullptr;
  double v = std::strtod(text, &end);
  std::string unit(end);
  double mul = 1;
  if (unit == "K" || unit == "KB" || unit == "k") mul = 1024;
  else if (unit == "M" || unit == "MB") mul = 1024.0 * 1024;
  else if (unit == "G" || unit == "GB") mul = 1024.0 * 1024 * 1024;
  else TRI_CHECK(unit.empty(), "cannot read a byte size from '{}' (use e.g. 4096, 64K, 16M)", text);
  TRI_CHECK(end != text && v > 0, "cannot read a byte size from '{}'", text);
  return static_cast<int64_t>(v * mul);
}

std::string human(int64_t bytes) {
  if (bytes >= (1 << 20)) return fmt::format("{}M", bytes >> 20);
  if (bytes >= (1 << 10)) return fmt::format("{}K", bytes >> 10);
  return fmt::format("{}", bytes);
}

enum class Coll { kAllreduce, kReduceScatter, kAllGather, kAllToAll, kAllToAllV };

// all_to_all_v's counts for about `count` elements sent per rank: u * (1 + (rank + s) % n) to
// rank s; the same expression is what rank s receives from `rank`.
std::vector<int64_t> uneven_counts(int64_t count, int n, int rank) {
  const int64_t u = std::max<int64_t>(1, count / (int64_t{n} * (n + 1) / 2));
  std::vector<int64_t> c(static_cast<std::size_t>(n));
  for (int s = 0; s < n; ++s) c[static_cast<std::size_t>(s)] = u * (1 + (rank + s) % n);
  return c;
}

struct Buffers {
  std::vector<float> a, b;  // a: allreduce buffer / reduce_scatter input / all_gather output
};

// Runs `iters` operations back to back; returns seconds per op on the slowest rank.
template <class F> double time_ops(MPI_Comm sync, int iters, F&& op) {
  MPI_Barrier(sync);
  double t0 = now_s();
  for (int i = 0; i < iters; ++i) op();
  double t = (now_s() - t0) / iters, worst = 0;
  MPI_Allreduce(&t, &worst, 1, MPI_DOUBLE, MPI_MAX, sync);
  return worst;
}

struct Result {
  double raw_s = 0, tri_s = 0;
};

Result run_one(Coll coll, int64_t count, Communicator& tri, MPI_Comm raw, MPI_Comm sync,
               Buffers& buf) {
  const int n = tri.size();
  const int64_t bytes = count * 4;
  const int iters = static_cast<int>(std::clamp<int64_t>((int64_t{256} << 20) / bytes, 3, 200));
  const int chunk = static_cast<int>(count / n);
  float* a = buf.a.data();
  float* b = buf.b.data();
  // all_to_all_v: what this rank sends to / receives from each rank, as MPI's int layout too.
  const std::vector<int64_t> counts = uneven_counts(count, n, tri.rank());
  std::vector<int> raw_counts, raw_displs;
  for (int64_t c : counts) {
    raw_displs.push_back(raw_counts.empty() ? 0 : raw_displs.back() + raw_counts.back());
    raw_counts.push_back(static_cast<int>(c));
  }
  const int64_t v_total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  auto raw_op = [&] {
    switch (coll) {
      case Coll::kAllreduce:
        MPI_Allreduce(MPI_IN_PLACE, a, static_cast<int>(count), MPI_FLOAT, MPI_SUM, raw);
        break;
      case Coll::kReduceScatter:
        MPI_Reduce_scatter_block(a, b, chunk, MPI_FLOAT, MPI_SUM, raw);
        break;
      case Coll::kAllGather:
        MPI_Allgather(b, chunk, MPI_FLOAT, a, chunk, MPI_FLOAT, raw);
        break;
      case Coll::kAllToAll:
        MPI_Alltoall(a, chunk, MPI_FLOAT, b, chunk, MPI_FLOAT, raw);
        break;
      case Coll::kAllToAllV:
        MPI_Alltoallv(a, raw_counts.data(), raw_displs.data(), MPI_FLOAT, b, raw_counts.data(),
                      raw_displs.data(), MPI_FLOAT, raw);
        break;
    }
  };
  auto tri_op = [&] {
    switch (coll) {
      case Coll::kAllreduce:
        tri.allreduce(std::span(a, count)).wait();
        break;
      case Coll::kReduceScatter:
        tri.reduce_scatter(std::span<const float>(a, int64_t{chunk} * n), std::span(b, chunk))
            .wait();
        break;
      case Coll::kAllGather:
        tri.all_gather(std::span<const float>(b, chunk), std::span(a, int64_t{chunk} * n)).wait();
        break;
      case Coll::kAllToAll:
        tri.all_to_all(std::span<const float>(a, int64_t{chunk} * n), std::span(b, int64_t{chunk} * n)).wait();
        break;
      case Coll::kAllToAllV:
        tri.all_to_all_v(std::span<const float>(a, v_total), counts, std::span(b, v_total), counts).wait();
        break;
    }
  };
  raw_op();  // warm-up
  tri_op();
  Result r{1e30, 1e30};
  for (int round = 0; round < 3; ++round) {
    r.raw_s = std::min(r.raw_s, time_ops(sync, iters, raw_op));
    r.tri_s = std::min(r.tri_s, time_ops(sync, iters, tri_op));
  }
  return r;
}

// A compute kernel that touches only a small private buffer (stays in L1/L2).
double compute(int64_t reps, std::vector<float>& scratch) {
  double acc = 0;
  for (int64_t r = 0; r < reps; ++r) {
    for (float& x : scratch) x = x * 0.999f + 0.001f;
    acc += scratch[r % scratch.size()];
  }
  return acc;
}

// Issue a collective, compute for about as long as it takes, then wait: how much of the
// collective is still exposed after the compute? Trident (worker thread) against raw
// MPI_Iallreduce (OpenMPI libnbc, no MPI calls during the compute).
void overlap_report(Communicator& tri, MPI_Comm raw, MPI_Comm sync, Buffers& buf,
                    int64_t count) {
  const int rank = tri.rank();
  float* a = buf.a.data();
  std::vector<float> scratch(4096, 1.0f);
  double sink = 0;
  const double comm_s = time_ops(sync, 5, [&] {
    MPI_Allreduce(MPI_IN_PLACE, a, static_cast<int>(count), MPI_FLOAT, MPI_SUM, raw);
  });
  // The compute runs for a fixed wall-clock window of 1.5x the collective's time, so a
  // collective that progresses during it adds (almost) nothing after the window.
  const double window_s = 1.5 * comm_s;
  auto compute_for = [&](double seconds) {
    const double t0 = now_s();
    while (now_s() - t0 < seconds) sink += compute(8, scratch);
  };
  const double compute_s = window_s;
  const double tri_s = time_ops(sync, 3, [&] {
    comm::Work w = tri.allreduce(std::span(a, count));
    compute_for(window_s);
    w.wait();
  });
  const double nbc_s = time_ops(sync, 3, [&] {
    MPI_Request req;
    MPI_Iallreduce(MPI_IN_PLACE, a, static_cast<int>(count), MPI_FLOAT, MPI_SUM, raw, &req);
    compute_for(window_s);
    MPI_Wait(&req, MPI_STATUS_IGNORE);
  });
  if (rank == 0) {
    auto exposed = [&](double total) { return std::max(0.0, total - compute_s); };
    std::printf("\n# overlap: allreduce of %s issued, then %.1f ms of compute, then wait "
                "(allreduce alone %.1f ms)\n",
                human(count * 4).c_str(), compute_s * 1e3, comm_s * 1e3);
    std::printf("# %-34s %10s %12s %10s\n", "method", "total_ms", "exposed_ms", "exposed%");
    std::printf("  %-34s %10.1f %12.1f %9.0f%%\n", "trident (worker thread)", tri_s * 1e3,
                exposed(tri_s) * 1e3, 100 * exposed(tri_s) / comm_s);
    std::printf("  %-34s %10.1f %12.1f %9.0f%%\n", "MPI_Iallreduce, no test() calls",
                nbc_s * 1e3, exposed(nbc_s) * 1e3, 100 * exposed(nbc_s) / comm_s);
    std::printf("# (sink %g)\n", sink > 0 ? 0.0 : 1.0);
  }
}

}  // namespace

int run_bench_comm(int argc, char** argv) {
  comm::MpiRuntime mpi(&argc, &argv);
  int64_t min_bytes = 1024, max_bytes = int64_t{256} << 20;
  int step = 4;
  bool overlap = true;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> const char* {
      TRI_CHECK(i + 1 < argc, "{} needs a value", arg);
      return argv[++i];
    };
    if (arg == "--max-bytes") max_bytes = parse_bytes(value());
    else if (arg == "--min-bytes") min_bytes = parse_bytes(value());
    else if (arg == "--step") step = std::atoi(value());
    else if (arg == "--no-overlap") overlap = false;
    else if (arg == "--help" || arg == "-h") {
      if (mpi.world_rank() == 0) {
        std::printf("usage: comm [--min-bytes 1K] [--max-bytes 256M] [--step 4] [--no-overlap]\n"
                    "run with scripts/trident-mpirun -n N\n");
      }
      return 0;
    } else {
      TRI_FAIL("unknown option {} (see --help)", arg);
    }
  }
  TRI_CHECK(step >= 2 && min_bytes <= max_bytes, "need --step >= 2 and min <= max bytes");

  int result = 0;
  {
    const auto tri_owner = make_mpi_communicator(MPI_COMM_WORLD, "world", comm::CommOptions::from_env());
    Communicator& tri = *tri_owner;
    MPI_Comm raw, sync;
    MPI_Comm_dup(MPI_COMM_WORLD, &raw);
    MPI_Comm_dup(MPI_COMM_WORLD, &sync);
    const int n = tri.size(), rank = tri.rank();
    Buffers buf;
    // + n(n+1)/2: all_to_all_v sends at least one element per unit of its uneven pattern.
    buf.a.assign(max_bytes / 4 + n + n * (n + 1) / 2, 1.0f);
    buf.b.assign(max_bytes / 4 + n + n * (n + 1) / 2, 1.0f);
    if (rank == 0) {
      std::printf("# trident bench comm: %d ranks, fp32, sum; raw = blocking MPI on the same "
                  "buffers; times per op (us), bandwidths GB/s\n", n);
    }
    struct Spec { Coll coll; const char* name; double factor; };
    const Spec specs[] = {
        {Coll::kAllreduce, "allreduce", n > 1 ? 2.0 * (n - 1) / n : 0.0},
        {Coll::kReduceScatter, "reduce_scatter", n > 1 ? 1.0 * (n - 1) / n : 0.0},
        {Coll::kAllGather, "all_gather", n > 1 ? 1.0 * (n - 1) / n : 0.0},
        {Coll::kAllToAll, "all_to_all", n > 1 ? 1.0 * (n - 1) / n : 0.0},
        {Coll::kAllToAllV, "all_to_all_v (uneven pairs)", n > 1 ? 1.0 * (n - 1) / n : 0.0},
    };
    for (const Spec& spec : specs) {
      if (rank == 0) {
        std::printf("\n# %s (busbw = algbw * %.3f)\n", spec.name, spec.factor);
        std::printf("# %10s %10s | %10s %8s %8s | %10s %8s %8s | %6s\n", "size", "count",
                    "raw_us", "algbw", "busbw", "tri_us", "algbw", "busbw", "ratio");
      }
      double worst_big = 1e30;
      for (int64_t bytes = min_bytes; bytes <= max_bytes; bytes *= step) {
        int64_t count = bytes / 4;
        if (spec.coll != Coll::kAllreduce) count -= count % n;  // equal chunks
        if (count == 0) continue;
        Result r = run_one(spec.coll, count, tri, raw, sync, buf);
        if (spec.coll == Coll::kAllToAllV) {  // what it sends: whole units per pair
          const std::vector<int64_t> c = uneven_counts(count, n, rank);
          count = std::accumulate(c.begin(), c.end(), int64_t{0});
        }
        const double gb = count * 4 / 1e9;
        const double raw_bus = gb / r.raw_s * spec.factor, tri_bus = gb / r.tri_s * spec.factor;
        const double ratio = r.raw_s / r.tri_s;  // = tri busbw / raw busbw
        if (bytes >= (int64_t{16} << 20)) worst_big = std::min(worst_big, ratio);
        if (rank == 0) {
          std::printf("  %10s %10lld | %10.1f %8.3f %8.3f | %10.1f %8.3f %8.3f | %6.3f\n",
                      human(count * 4).c_str(), static_cast<long long>(count), r.raw_s * 1e6,
                      gb / r.raw_s, raw_bus, r.tri_s * 1e6, gb / r.tri_s, tri_bus, ratio);
        }
      }
      if (rank == 0 && worst_big < 1e29) {
        bool ok = worst_big >= 0.9;
        std::printf("# %s: worst trident/raw busbw ratio at >= 16M: %.3f (target >= 0.90: %s)\n",
                    spec.name, worst_big, ok ? "ok" : "MISSED");
      }
    }
    if (overlap && n > 1) {
      int64_t bytes = std::min<int64_t>(max_bytes, int64_t{16} << 20);
      overlap_report(tri, raw, sync, buf, bytes / 4);
    }
    MPI_Comm_free(&raw);
    MPI_Comm_free(&sync);
  }
  return result;
}

}  // namespace trident::cli
