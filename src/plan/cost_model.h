// Predicted step time of a layout: per-chunk forward/backward costs from a compute model
// (measured on this machine, or FLOP-rate analytic for tests), tensor-parallel collectives
// folded into the chunks' costs, the pipeline simulator (parallel/pipeline/simulator.h) for
// the schedule's bubbles, then the data-parallel gradient/parameter traffic of the ZeRO stage
// and the optimizer (with optimizer offload: the slower of its compute and its disk I/O,
// which the moment store overlaps). Ranks that share cores are modelled explicitly: the step is at least the
// total CPU work of all ranks divided by the cores (with 8 ranks on 2 cores a pipeline's idle
// ranks leave their core to others, so bubbles cost little and every FLOP and copy counts).
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/matmul_engine.h"
#include "nn/model_config.h"
#include "plan/layout.h"

namespace trident::plan {

// Seconds one rank (with its threads) spends on a piece of the model for one micro-batch of
// B sequences of T tokens, on a tp slice of width 1/tp.
class ComputeModel {
 public:
  virtual ~ComputeModel() = default;
  virtual double block_forward(int tp, bool sp, int64_t B, int64_t T) = 0;
  virtual double block_backward(int tp, bool sp, int64_t B, int64_t T) = 0;
  virtual double embed_forward(int tp, bool sp, int64_t B, int64_t T) = 0;
  virtual double embed_backward(int tp, bool sp, int64_t B, int64_t T) = 0;
  // ln_f, tied LM head, loss, and their backward (the last chunk's Backward runs them).
  virtual double head(int tp, bool sp, int64_t B, int64_t T) = 0;
  // Zeroing gradients, the grad-norm sum and AdamW over `elements` local parameters.
  virtual double optimizer(int64_t elements) = 0;
};

// Work of each piece in the units the rates below use (FLOPs, or token-channels for the
// embedding, or elements for the optimizer).
double block_forward_flops(const nn::ModelConfig& m, int tp, int64_t B, int64_t T);
double head_flops(const nn::ModelConfig& m, int tp, int64_t B, int64_t T);  // forward + backward

// Everything at one FLOP rate (backward = 2x forward): for tests and --flops.
class FlopComputeModel final : public ComputeModel {
 public:
  FlopComputeModel(const nn::ModelConfig& m, double flops_per_s, double bytes_per_s = 10e9)
      : m_(m), flops_(flops_per_s), bytes_(bytes_per_s) {}
  double block_forward(int tp, bool, int64_t B, int64_t T) override;
  double block_backward(int tp, bool sp, int64_t B, int64_t T) override {
    return 2 * block_forward(tp, sp, B, T);
  }
  double embed_forward(int, bool, int64_t B, int64_t T) override;
  double embed_backward(int tp, bool sp, int64_t B, int64_t T) override {
    return embed_forward(tp, sp, B, T);
  }
  double head(int tp, bool, int64_t B, int64_t T) override;
  double optimizer(int64_t elements) override;

 private:
  nn::ModelConfig m_;
  double flops_, bytes_;
};

// How MeasuredComputeModel times when ranks calibrate together (plan/calibrate.h): every rank
// of the job measures the same piece at the same moment, so each sees the contention the
// training job will see (ranks sharing cores, memory bandwidth, context switches).
class TimingSync {
 public:
  virtual ~TimingSync() = default;
  virtual void begin() = 0;                          // all ranks start together (a barrier)
  virtual double combine(double local_s) = 0;        // every rank's value -> one (the median), same on all
  // Wall seconds measured while all ranks compute -> seconds of one core's work: the share of
  // a core each rank had (cores / (ranks * threads), at most 1).
  virtual double core_share() const = 0;
};

// Times the real model pieces (nn::Model forward/backward of one block, the embedding and the
// head, at the tp slice's widths, tp communication replaced by no-ops, with the run's matmul
// precision) and AdamW on this machine with `threads` threads, once per (tp, sp, shape) when first asked, and scales to
// other shapes by the FLOP formulas. Calibration shapes are capped (<= 2048 tokens per
// block, <= 256 for the head, which is linear in tokens) so planning gpt2 stays quick.
class MeasuredComputeModel final : public ComputeModel {
 public:
  MeasuredComputeModel(const nn::ModelConfig& m, int threads,
                       kernels::Precision precision = kernels::Precision::kFp32);
  double block_forward(int tp, bool sp, int64_t B, int64_t T) override;
  double block_backward(int tp, bool sp, int64_t B, int64_t T) override;
  double embed_forward(int tp, bool sp, int64_t B, int64_t T) override;
  double embed_backward(int tp, bool sp, int64_t B, int64_t T) override;
  double head(int tp, bool sp, int64_t B, int64_t T) override;
  double optimizer(int64_t elements) override;
  // Seconds spent measuring so far.
  double calibration_seconds() const { return calib_s_; }
  // Calibrate concurrently: each piece is timed on every rank at once (a fixed number of runs,
  // the mean per rank, the median over ranks, times core_share()) instead of the best run of
  // this process alone. All ranks must then ask for the same pieces in the same order (run
  // the same make_plan). nullptr: alone (the default).
  void set_sync(TimingSync* sync) { sync_ = sync; }

 private:
  struct BlockTimes { double fwd, bwd; int64_t B, T; };
  struct EndTimes { double embed_fwd, embed_bwd, head; int64_t B, T; };
  const BlockTimes& block(int tp, bool sp, int64_t B, int64_t T);
  const EndTimes& ends(int tp, bool sp, int64_t T);
  nn::ModelConfig m_;
  int threads_;
  kernels::Precision precision_;
  std::map<std::tuple<int, bool, int64_t, int64_t>, BlockTimes> blocks_;
  std::map<std::tuple<int, bool, int64_t>, EndTimes> ends_;
  double optimizer_per_elem_ = -1;
  double calib_s_ = 0;
  TimingSync* sync_ = nullptr;
  template <class F> double time_piece(F&& fn, double budget);
};

// Point-to-point and collective costs (ring algorithms): a message of b bytes takes
// latency + b / bandwidth; an allreduce over n ranks 2(n-1)/n * b / bandwidth + 2(n-1) * latency.
// p2p_latency < 0: the same as latency. copy_bandwidth < 0: the same as bandwidth; it is the
// rate at which the CPU copies message bytes (the shared-cores bound counts that work), which
// differs from the wall-clock bandwidth when it was measured with ranks sharing cores.
struct CommModel {
  double bandwidth = 5e9;  // bytes/s
  double latency = 20e-6;  // s, per step of a collective
  double p2p_latency = -1;
  double copy_bandwidth = -1;
  double p2p(double bytes) const { return (p2p_latency >= 0 ? p2p_latency : latency) + bytes / bandwidth; }
  double allreduce(double bytes, int n) const;
  double reduce_scatter(double bytes, int n) const;  // = all_gather
  // A rank sends `bytes` in all, 1/n of them to itself (a copy): n - 1 steps, each one
  // latency and 1/n of the bytes (pairwise exchange), the reduce_scatter's cost.
  double all_to_all(double bytes, int n) const { return reduce_scatter(bytes, n); }
  // The bytes-over-bandwidth part only (CPU time of the copies on a shared-memory transport).
  double allreduce_copy(double bytes, int n) const;
};

// The disk under --offload-dir, as the engine uses it (plan/calibrate_disk.h): sequential
// O_DIRECT reads and writes in the offload store's requests (both moments of one block).
// 0: not measured (the planner then cannot price offload).
struct DiskModel {
  double read_bandwidth = 0;   // bytes/s
  double write_bandwidth = 0;  // bytes/s
  bool known() const { return read_bandwidth > 0 && write_bandwidth > 0; }
};

// Disk seconds of one rank's offloaded AdamW pass: its moments (`moment_bytes`, 8 per element
// of its optimizer shard) read once and written once per step, one after the other on the
// disk, whose bandwidth the `sharing` ranks of a node split (they all update at the step's end).
double offload_io_seconds(double moment_bytes, const DiskModel& disk, int sharing);
// Wall seconds of the offloaded update: the store double-buffers (block i updates while i + 1
// reads and i - 1 writes), so the I/O hides behind the compute and the slower of the two is
// the update's time. bench/offload prints this prediction against its measurement.
inline double offloaded_update_seconds(double io_s, double compute_s) { return std::max(io_s, compute_s); }
// Seconds one pass (a chunk's forward or backward of one micro-batch) waits for its shard-slice
// reads (`read_s` in all, `first_s` of them the first group's): ZeRO-3 with the values offloaded
// reads group g + 2 while g computes, so the first read waits in full and the rest hide behind
// the pass's compute (`compute_s`) as long as the disk keeps up.
inline double param_stall_seconds(double read_s, double first_s, double compute_s) {
  return first_s + std::max(0.0, read_s - first_s - compute_s);
}
// One model chunk's stalls per micro-batch under --offload optimizer+params, from the memory
// model's `slice_reads` (bytes a micro-batch reads over the rank's `chunks`, half before the
// forward gathers, half before the backward ones) and `first_slice`, at `read_bandwidth`
// (bytes/s, this rank's share of the disk), against the chunk's forward and backward compute.
// The forward waits for its first group's read in full; the backward's first group (the head)
// is still gathered from the forward. predict_step adds these to the chunks' costs;
// bench/offload prints them against a measured step.
struct PassStalls {
  double read_s = 0;  // one pass's reads (the forward's, the same again for the backward)
  double forward_s = 0, backward_s = 0;
};
inline PassStalls param_pass_stalls(double slice_reads, double first_slice, int chunks, double read_bandwidth,
                                    double forward_s, double backward_s) {
  PassStalls p;
  p.read_s = slice_reads / 2 / chunks / read_bandwidth;
  const double first = std::min(first_slice / read_bandwidth, p.read_s);
  p.forward_s = param_stall_seconds(p.read_s, first, forward_s);
  p.backward_s = param_stall_seconds(p.read_s, 0.0, backward_s);
  return p;
}

struct MachineModel {
  int cores = 1;             // cores all ranks share (one machine)
  int threads_per_rank = 1;  // OpenMP/BLAS threads of each rank
  CommModel comm;            // links between ranks of one node
  // Several nodes: mesh rank -> node (plan/placement.h; empty: one node), and the link between
  // nodes, which a group's collectives use when the group spans nodes.
  std::vector<int> node_of_rank;
  CommModel inter_node;
  // Streams that left each node at once when inter_node was measured (every rank of a node in
  // a pair across nodes): a node's link is shared, so a group whose ring is one of k streams
  // on it gets inter_node.bandwidth * inter_node_streams / k.
  int inter_node_streams = 1;
  // The world collectives every step pays whatever the layout, one after another: the loss +
  // grad-norm sum and the non-finite vote (engine), the preemption vote (trainer). Measured
  // under mpirun (plan/calibrate.h); alone: comm's latency model of a small world allreduce.
  int step_world_allreduces = 3;
  double world_allreduce_s = -1;  // one small allreduce over all ranks; < 0: from the latency model
  bool overlap = true;       // dp gradient communication overlaps backward
  // Share of a core a rank keeps busy while it waits for a message (a pipeline bubble): MPI
  // waits spin and yield rather than sleep. 0: bubbles leave the cores to the other ranks.
  // Measured under mpirun (plan/calibrate.h); 0 when planning alone.
  double wait_cpu = 0;
  // The offload disk (--offload-dir), shared by the ranks of each node; needed by layouts
  // that offload (Layout::offload, PlanRequest::offload_optimizer).
  DiskModel disk;
};

struct StepPrediction {
  double step_s = 0;          // max(dedicated_s, shared_s, contended_s) + sync_s
  double dedicated_s = 0;     // every rank on its own cores: pipeline critical path + exposed comm
  double shared_s = 0;        // total CPU work of all ranks (+ their spinning in bubbles) / cores
  double contended_s = 0;     // the critical path with compute at each rank's share of the cores
  double compute_s = 0;       // busiest rank's compute (incl. tp collectives), per step
  double dp_comm_s = 0;       // busiest rank's dp traffic per step (before overlap)
  double ep_comm_s = 0;       // busiest rank's MoE token exchange per step (in compute_s)
  double optimizer_s = 0;      // AdamW's compute (busiest rank)
  double offload_s = 0;        // busiest rank's offload disk time (offload_io_seconds); 0 without offload
  // --offload optimizer+params: busiest rank's disk time reading the layers' shard slices
  // (MemoryBreakdown::slice_reads per micro-batch), and of it what the read-ahead does not hide
  // (param_stall_seconds), which the layers' forward and backward costs carry.
  double param_read_s = 0, param_stall_s = 0;
  double sync_s = 0;          // the per-step world allreduces (MachineModel), added to the step
  double bubble = 0;          // mean pipeline idle fraction (simulator), 0 without pp
  double tokens_per_s = 0;
  bool shared_bound() const { return std::max(shared_s, contended_s) > dedicated_s; }
};

// Measures a single-thread memcpy bandwidth (bytes/s) for the default link model of ranks on
// one machine: a shared-memory message is copied twice (in and out), so bandwidth / 2.
double measure_memcpy_bandwidth(double seconds = 0.1);

StepPrediction predict_step(const PlanRequest& request, const Layout& layout, ComputeModel& compute,
                            const MachineModel& machine);

}  // namespace trident::plan
