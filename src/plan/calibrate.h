// Calibrating the cost model the way the job will use the machine: `trident plan` run under
// mpirun with W ranks (scripts/trident-mpirun -n W) has all W ranks measure together, so the
// numbers include what W ranks sharing the cores do to each other:
//   - compute: every rank times the same model piece at the same moment (TimingSync below
//     for MeasuredComputeModel), the median over ranks, converted to one core's seconds;
//   - communication: small and large allreduces and ping-pong messages between rank pairs
//     (all pairs at once, as the tp/dp/pp groups of a job talk at once) through
//     comm::Communicator, giving the per-step latency (peers must be scheduled to answer:
//     mpi_yield_when_idle), the message latency and the link bandwidth of CommModel; the
//     latencies are taken with one pair talking while all other ranks compute, as in a job.
// All functions are collective over the communicator; every rank gets the same values.
#pragma once

#include <vector>

#include "comm/communicator.h"
#include "plan/cost_model.h"

namespace trident::plan {

// The median over the ranks of `comm` of each rank's `value`; NaN values (ranks that did not
// take part) are ignored. Same result on every rank.
double median_across(comm::Communicator& comm, double value);

class CommTimingSync final : public TimingSync {
 public:
  // `cores` all ranks share, `threads` per rank.
  CommTimingSync(comm::Communicator& world, int cores, int threads);
  void begin() override;
  double combine(double local_s) override;
  double core_share() const override { return share_; }

 private:
  comm::Communicator& world_;
  double share_;
};

// One kind of link, measured with rank pairs that all talk at once.
struct PairTimes {
  double allreduce_small_s = 0;  // 4-byte allreduce in pairs (all pairs at once)
  double p2p_s = 0;              // one-way 4-byte message in pairs (half a round trip)
  double allreduce_large_s = 0;  // large_bytes allreduce in pairs
  // The pair holding rank 0 alone talking while all other ranks compute (W > 2): the latency a
  // group of a training job sees when the cores are busy with the other ranks.
  double loaded_allreduce_small_s = 0;
  double loaded_p2p_s = 0;
};

struct CommCalibration {
  int ranks = 1;
  double large_bytes = 0;
  double world_allreduce_small_s = 0;  // 4-byte allreduce over all ranks (each step pays a few)
  PairTimes intra;                     // pairs inside one node
  // latency = (loaded, when W > 2) small pair allreduce / 2 (one ring step), p2p_latency the
  // (loaded) one-way message, bandwidth from the large pair allreduce.
  CommModel model;
  // Several nodes: pairs across nodes (rank i of the node-major order with rank i + W/2), all
  // at once, as a dp or pp group spanning nodes talks while the others do.
  bool multi_node = false;
  PairTimes inter;
  CommModel inter_model;
};

// Measures CommModel over `world` (size >= 2). `core_share` as in TimingSync: the copy
// bandwidth (CPU work of the bytes) is the wall-clock bandwidth / core_share. node_of_rank:
// world rank -> node (comm::NodeMajorWorld::node_of); empty or all equal: one node.
CommCalibration calibrate_comm(comm::Communicator& world, double core_share,
                               const std::vector<int>& node_of_rank = {});

// How much of a core a rank keeps busy while it waits for a message (Work::wait on a recv
// spins with MPI_Test and yield; OpenMPI's mpi_yield_when_idle only yields): rank 0 times a
// fixed piece of arithmetic while the other ranks (a) sleep, (b) wait in recv for rank 0.
// With slowdown s = (b) / (a), the waiting ranks took w = (s * cores - threads) / (W - 1)
// cores each (0..1): rank 0 had cores / (threads + w (W - 1)) of its core.
struct WaitCalibration {
  double alone_s = 0, with_waiters_s = 0;
  double wait_cpu = 0;  // w
};
WaitCalibration calibrate_wait_cpu(comm::Communicator& world, int cores, int threads);

}  // namespace trident::plan
