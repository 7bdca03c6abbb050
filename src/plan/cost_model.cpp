// The FLOP compute model, communication costs and the step-time prediction (see cost_model.h);
// the measured compute model is in measured_compute_model.cpp.
#include "plan/cost_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/check.h"
#include "core/memory.h"
#include "core/rng.h"
#include "core/timer.h"
#include "kernels/kernels.h"
#include "nn/model.h"
#include "nn/architecture.h"
#include "nn/moe_exchange.h"
#include "parallel/pipeline/partition.h"
#include "parallel/pipeline/simulator.h"
#include "plan/memory_model.h"
#include "plan/placement.h"

namespace trident::plan {

// ---- work formulas ----
double block_forward_flops(const nn::ModelConfig& m, int tp, int64_t B, int64_t T) {
  // From the architecture's declaration; the last layer (an MoE one when any is) is the unit.
  return nn::layer_forward_flops(m, tp, B, T, m.n_layer - 1);
}

double head_flops(const nn::ModelConfig& m, int tp, int64_t B, int64_t T) {
  return 6.0 * static_cast<double>(B * T) * m.n_embd * static_cast<double>(m.padded_vocab(tp)) / tp;
}

double FlopComputeModel::block_forward(int tp, bool, int64_t B, int64_t T) {
  return block_forward_flops(m_, tp, B, T) / flops_;
}
double FlopComputeModel::embed_forward(int, bool, int64_t B, int64_t T) {
  return 12.0 * static_cast<double>(B * T) * m_.n_embd / bytes_;
}
double FlopComputeModel::head(int tp, bool, int64_t B, int64_t T) {
  return head_flops(m_, tp, B, T) / flops_;
}
double FlopComputeModel::optimizer(int64_t elements) {
  return 40.0 * static_cast<double>(elements) / bytes_;
}

// ---- communication ----
double offload_io_seconds(double moment_bytes, const DiskModel& disk, int sharing) {
  TRI_CHECK(disk.known(), "the offload disk's bandwidth is unknown (read {} B/s, write {} B/s)",
            disk.read_bandwidth, disk.write_bandwidth);
  const double ranks = std::max(1, sharing);
  return moment_bytes / (disk.read_bandwidth / ranks) + moment_bytes / (disk.write_bandwidth / ranks);
}

double CommModel::allreduce(double bytes, int n) const {
  if (n <= 1) return 0;
  return 2.0 * (n - 1) / n * bytes / bandwidth + 2.0 * (n - 1) * latency;
}
double CommModel::reduce_scatter(double bytes, int n) const {
  if (n <= 1) return 0;
  return static_cast<double>(n - 1) / n * bytes / bandwidth + (n - 1) * latency;
}
double CommModel::allreduce_copy(double bytes, int n) const {
  if (n <= 1) return 0;
  return 2.0 * (n - 1) / n * bytes / (copy_bandwidth > 0 ? copy_bandwidth : bandwidth);
}

// ---- the step ----
namespace {

struct TpCosts {
  double block_fwd = 0, block_bwd = 0, embed = 0, head = 0;
};

// Tensor-parallel collectives of one micro-batch (Megatron: two allreduces of (N, C) per
// block forward and two backward; sequence parallelism swaps each for a reduce-scatter +
// all-gather pair of the same bytes and re-gathers the LayerNorm outputs in backward).
TpCosts tp_costs(const CommModel& cm, const nn::ModelConfig& m, int tp, bool sp, int64_t N) {
  TpCosts c;
  if (tp <= 1) return c;
  const double act = 4.0 * static_cast<double>(N) * m.n_embd;
  c.block_fwd = 2 * cm.allreduce(act, tp);
  c.block_bwd = 2 * cm.allreduce(act, tp) +
                (sp ? 2 * cm.reduce_scatter(act, tp) + cm.allreduce(16.0 * m.n_embd, tp) : 0);
  c.embed = sp ? cm.reduce_scatter(act, tp) : cm.allreduce(act, tp);
  c.head = 3 * cm.allreduce(4.0 * static_cast<double>(N), tp) +
           (sp ? 2 * cm.reduce_scatter(act, tp) : cm.allreduce(act, tp));
  return c;
}

// Expert parallelism's token exchange of one MoE layer for one micro-batch of N tokens
// (nn/moe_mlp.h): forward the row counts (E int64, one all_to_all), the routed input rows to
// the experts' owners and their outputs back; backward the output gradients out and the input
// gradients back. Each all_to_allv moves this rank's k N rows of C floats
// (nn::moe_exchange_floats), 1/ep of them to its own experts. Balanced routing is assumed:
// every rank sends and receives as many rows, so the expert compute per rank is the routed
// tokens' expert FLOPs / ep = the block's own at ep 1 (what block_forward prices).
struct EpCosts {
  double fwd = 0, bwd = 0;
};
EpCosts ep_costs(const CommModel& cm, const nn::ModelConfig& m, int ep, int64_t N) {
  EpCosts c;
  if (ep <= 1) return c;
  const double rows = 4.0 * static_cast<double>(nn::moe_exchange_floats(m, N));
  c.fwd = cm.all_to_all(8.0 * m.n_experts, ep) + 2 * cm.all_to_all(rows, ep);
  c.bwd = 2 * cm.all_to_all(rows, ep);
  return c;
}

// CPU time of a link's bytes only: no latency, the copy rate.
CommModel copy_only(const CommModel& cm) {
  CommModel copy = cm;
  copy.latency = 0;
  copy.p2p_latency = 0;
  if (cm.copy_bandwidth > 0) copy.bandwidth = cm.copy_bandwidth;
  return copy;
}

// Data-parallel traffic of one step for Ψ local parameters (ddp_reducer.h); at ZeRO 1-2 the
// values all-gathered after the update are value_share x 4Ψ bytes (an all-gather costs what a
// reduce-scatter of the same bytes does): 1, or less with the sharded master's 16-bit copy.
double dp_traffic(const CommModel& cm, int zero, int dp, int M, double psi, double value_share) {
  if (dp <= 1) return 0;
  const double bytes = 4.0 * psi, values = value_share * bytes;
  switch (zero) {
    case 0: return cm.allreduce(bytes, dp);
    case 1: return cm.allreduce(bytes, dp) + cm.reduce_scatter(values, dp);   // + all_gather of values
    case 2: return M * cm.reduce_scatter(bytes, dp) + cm.reduce_scatter(values, dp);
    default: return 3.0 * M * cm.reduce_scatter(bytes, dp);  // gathers before fwd and bwd, reduce-scatter
  }
}

}  // namespace

StepPrediction predict_step(const PlanRequest& req, const Layout& l, ComputeModel& compute,
                            const MachineModel& machine) {
  const nn::ModelConfig& m = req.model;
  const int64_t B = req.batch_size / l.dp / l.micro_batches, T = req.seq_len, N = B * T;
  const int tp = l.tp, M = l.micro_batches, V = l.virtual_stages;
  const bool sp = l.sequence_parallel && tp > 1;
  const int64_t Nl = sp ? (N + tp - 1) / tp : N;
  // Each axis's groups talk over the intra-node link, or the inter-node one where a group
  // spans nodes. cm: the pipeline axis's (stage messages, the tied-embedding allreduce between
  // the first and the last stage).
  const GroupsCrossNodes crosses = groups_cross_nodes(l, machine.node_of_rank);
  auto link = [&](bool spans, int streams) {
    if (!spans) return machine.comm;
    CommModel shared = machine.inter_node;
    shared.bandwidth *= static_cast<double>(std::max(1, machine.inter_node_streams)) / std::max(1, streams);
    return shared;
  };
  const CommModel cm = link(crosses.pp, crosses.pp_streams);
  const CommModel tpl = link(crosses.tp, crosses.tp_streams), dpl = link(crosses.dp, crosses.dp_streams);
  const CommModel copy = copy_only(cm), tp_copy = copy_only(tpl), dp_copy = copy_only(dpl);
  const TpCosts tpc = tp_costs(tpl, m, tp, sp, N), tpc0 = tp_costs(tp_copy, m, tp, sp, N);
  // Expert parallelism: the ep group exchanges tokens, the edp group reduces expert gradients.
  const CommModel epl = link(crosses.ep, crosses.ep_streams), edpl = link(crosses.edp, crosses.edp_streams);
  const CommModel edp_copy = copy_only(edpl);
  const EpCosts epc = ep_costs(epl, m, l.ep, N), epc0 = ep_costs(copy_only(epl), m, l.ep, N);

  const double bf = compute.block_forward(tp, sp, B, T), bb = compute.block_backward(tp, sp, B, T);
  const double ef = compute.embed_forward(tp, sp, B, T), eb = compute.embed_backward(tp, sp, B, T);
  const double hd = compute.head(tp, sp, B, T);
  const pp::Partition part = pp::partition_layers(m.n_layer, {l.pp, V});
  const MemoryPrediction mem = predict_memory(req, l);

  const bool offloaded = l.offload || req.offload_optimizer;
  TRI_CHECK(!offloaded || machine.disk.known(),
            "{} offloads the optimizer but the offload disk's bandwidth is unknown; plan with --offload-dir "
            "DIR (measured there) or --disk-mbps", l.train_flags());
  // One disk per node, shared by the node's ranks of this layout.
  int disk_sharing = l.world();
  if (!machine.node_of_rank.empty()) {
    disk_sharing = static_cast<int>(std::count(machine.node_of_rank.begin(),
                                               machine.node_of_rank.begin() + std::min<std::ptrdiff_t>(
                                                   l.world(), static_cast<std::ptrdiff_t>(machine.node_of_rank.size())),
                                               machine.node_of_rank.front()));
  }
  double param_read_s = 0, param_stall_s = 0;  // busiest rank's (optimizer+params)

  pp::CostModel costs;
  costs.comm = l.pp > 1 ? cm.p2p(4.0 * static_cast<double>(Nl) * m.n_embd) : 0;
  costs.tied = nn::has_tied_embedding(m) ? cm.allreduce(4.0 * static_cast<double>(m.padded_vocab(tp) / tp) * m.n_embd, 2) : 0.0;
  std::vector<double> cpu_work(static_cast<std::size_t>(l.pp)), bwd_one(static_cast<std::size_t>(l.pp));
  std::vector<double> ep_exchange(static_cast<std::size_t>(l.pp));
  std::vector<std::vector<double>> compute_fwd, compute_bwd;  // the chunks' costs without tp collectives
  for (int r = 0; r < l.pp; ++r) {
    costs.forward_by_chunk.emplace_back();
    costs.backward_by_chunk.emplace_back();
    compute_fwd.emplace_back();
    compute_bwd.emplace_back();
    double work = 0;
    for (int c = 0; c < V; ++c) {
      const nn::StageSpec& s = part.chunk(r, c);
      const double layers = s.layer_end - s.layer_begin;
      const double moe = moe_layer_count(m, s.layer_begin, s.layer_end);
      // The chunk's layers in units of the priced one (block_forward_flops): they differ when
      // some are dense (first_k_dense); each has one tp region either way.
      const double units = layers > 0 ? nn::layers_forward_flops(m, tp, B, T, s.layer_begin, s.layer_end) /
                                            block_forward_flops(m, tp, B, T)
                                      : 0.0;
      auto fwd = [&](const TpCosts& t, const EpCosts& e) {
        return (s.has_embedding ? ef + t.embed : 0) + units * bf + layers * t.block_fwd + moe * e.fwd;
      };
      // Full recompute reruns every layer's forward (its collectives and token exchange too)
      // before its backward; selective's attention-core rerun is left out (small next to the
      // layer's matmuls).
      const bool rerun = req.recompute == nn::Recompute::kFull;
      auto bwd = [&](const TpCosts& t, const EpCosts& e) {
        const double work = units * (bb + (rerun ? bf : 0)) + layers * (t.block_bwd + (rerun ? t.block_fwd : 0));
        return (s.has_head ? hd + t.head : 0) + work + moe * (e.bwd + (rerun ? e.fwd : 0)) +
               (s.has_embedding ? eb : 0);
      };
      costs.forward_by_chunk.back().push_back(fwd(tpc, epc));
      costs.backward_by_chunk.back().push_back(bwd(tpc, epc));
      compute_fwd.back().push_back(fwd(TpCosts{}, EpCosts{}));
      compute_bwd.back().push_back(bwd(TpCosts{}, EpCosts{}));
      work += M * (fwd(tpc0, epc0) + bwd(tpc0, epc0));
      bwd_one[static_cast<std::size_t>(r)] += bwd(tpc, epc);
      ep_exchange[static_cast<std::size_t>(r)] += M * moe * (epc.fwd * (rerun ? 2 : 1) + epc.bwd);
      // Activation and gradient messages: copied out and in (2 per micro-batch per chunk edge).
      if (l.pp > 1) work += 2.0 * M * copy.p2p(4.0 * static_cast<double>(Nl) * m.n_embd);
    }
    cpu_work[static_cast<std::size_t>(r)] = work;
    // --offload optimizer+params: each pass reads its groups' shard slices from the disk
    // (shared by the node's ranks); what the read-ahead cannot hide stalls the pass.
    const MemoryBreakdown& mr = mem.by_pp_rank[static_cast<std::size_t>(r)];
    if (offloaded && mr.slice_reads > 0) {
      const double bw = machine.disk.read_bandwidth / disk_sharing;
      double stall = 0;
      for (int c = 0; c < V; ++c) {
        const auto j = static_cast<std::size_t>(c);
        const PassStalls ps =
            param_pass_stalls(mr.slice_reads, mr.first_slice, V, bw, compute_fwd.back()[j], compute_bwd.back()[j]);
        const double f = ps.forward_s, b = ps.backward_s;
        costs.forward_by_chunk.back()[j] += f;
        costs.backward_by_chunk.back()[j] += b;
        bwd_one[static_cast<std::size_t>(r)] += b;
        stall += M * (f + b);
      }
      param_read_s = std::max(param_read_s, M * mr.slice_reads / bw);
      param_stall_s = std::max(param_stall_s, stall);
    }
  }

  StepPrediction p;
  p.param_read_s = param_read_s;
  p.param_stall_s = param_stall_s;
  double pipe_step = 0;
  std::vector<double> busy(static_cast<std::size_t>(l.pp)), bubbles(static_cast<std::size_t>(l.pp));
  if (l.pp > 1) {
    const pp::SimResult sim = pp::simulate(pp::ScheduleSpec{l.schedule, l.pp, M, V}, costs);
    TRI_CHECK(sim.ok, "pipeline simulation of {} failed: {}", l.train_flags(), sim.error);
    pipe_step = sim.step_time;
    busy = sim.busy;
    bubbles = sim.bubble;
    double idle = 0;
    for (double b : sim.bubble) idle += b;
    p.bubble = idle / l.pp;
  } else {
    busy[0] = M * (costs.forward_by_chunk[0][0] + costs.backward_by_chunk[0][0]);
    pipe_step = busy[0];
  }

  const double bucket_bytes = req.bucket_mb * 1024.0 * 1024.0;
  double tail = 0, shared_work = 0, opt_wall_max = 0;
  for (int r = 0; r < l.pp; ++r) {
    const auto i = static_cast<std::size_t>(r);
    const double psi = static_cast<double>(mem.params_by_pp_rank[i]);
    // Under ep the expert weights are reduced over edp (dp / ep ranks), the rest over dp.
    const double experts = l.ep > 1 ? static_cast<double>(mem.expert_params_by_pp_rank[i]) : 0.0;
    // The value all-gather's share of 4Ψ, applied to the expert and the dense parts alike (the
    // value-read parameters an MoE adds, its routers, are a sliver of either).
    const double value_share = psi > 0 ? mem.value_gather_bytes_by_pp_rank[i] / (4.0 * psi) : 1.0;
    auto grad_traffic = [&](const CommModel& dense_link, const CommModel& expert_link) {
      return dp_traffic(dense_link, l.zero, l.dp, M, psi - experts, value_share) +
             (experts > 0 ? dp_traffic(expert_link, l.zero, l.dp / l.ep, M, experts, value_share) : 0.0);
    };
    const double dp_comm = grad_traffic(dpl, edpl);
    // What cannot hide behind backward: the bucket finished last (the embedding's, which
    // holds the tied embedding, on the first stage) and whatever exceeds the backward it overlaps with
    // (the last micro-batch's for ZeRO 0/1; the whole step's for 2/3, which talk every
    // micro-batch).
    const double window = machine.overlap ? (l.zero >= 2 ? busy[i] : bwd_one[i]) : 0;
    double last_bytes = std::min(4.0 * psi, bucket_bytes);
    const nn::StageSpec& first = part.chunk(r, 0);
    if (first.has_embedding || part.chunk(r, V - 1).has_head) {
      last_bytes = std::max(last_bytes, 4.0 * static_cast<double>(m.padded_vocab(tp) / tp) * m.n_embd);
    }
    const double last = std::min(dp_comm, dp_traffic(dpl, std::min(l.zero, 1), l.dp, 1, last_bytes / 4.0, value_share));
    const double exposed = std::max(last, dp_comm - window);
    // ZeRO: this rank's shard, dense state over dp and expert state over edp.
    const double owned = std::ceil((psi - experts) / l.dp) + (experts > 0 ? std::ceil(experts / (l.dp / l.ep)) : 0.0);
    // A LoRA run updates its adapters only (the memory model counted the trained elements).
    const double opt = compute.optimizer(m.lora.enabled() ? mem.trained_by_pp_rank[i]
                                                          : static_cast<int64_t>(l.zero >= 1 ? owned : psi));
    // Offloaded: the moments the memory model put on disk stream in and out behind the update.
    const double io = offloaded ? offload_io_seconds(mem.by_pp_rank[i].offloaded, machine.disk, disk_sharing) : 0.0;
    const double opt_wall = offloaded ? offloaded_update_seconds(io, opt) : opt;
    tail = std::max(tail, exposed + opt_wall);
    p.offload_s = std::max(p.offload_s, io);
    opt_wall_max = std::max(opt_wall_max, opt_wall);
    p.dp_comm_s = std::max(p.dp_comm_s, dp_comm);
    p.optimizer_s = std::max(p.optimizer_s, opt);
    p.compute_s = std::max(p.compute_s, busy[i]);
    p.ep_comm_s = std::max(p.ep_comm_s, ep_exchange[i]);
    shared_work += cpu_work[i] + grad_traffic(dp_copy, edp_copy) + opt;
  }
  p.dedicated_s = pipe_step + tail;
  // Every tp and dp rank of a stage does the same work; each uses threads_per_rank threads.
  const double thr = machine.threads_per_rank, cores = std::max(1, machine.cores);
  p.shared_s = shared_work * l.dp * l.tp * thr / cores;
  if (machine.wait_cpu > 0 && l.pp > 1) {
    // Ranks waiting in a bubble (a fraction bubble_r of the step) still burn wait_cpu of a
    // core: cores * S = work + wait_cpu * sum(bubble_r) * S over all ranks, so
    // S = work / (cores - wait_cpu * sum(bubble_r)). A computing rank always gets at least
    // its fair share, cores / (ranks * threads), which bounds S by the path at that share.
    double idle_ranks = 0;  // sum over all ranks of their bubble fractions
    for (double b : bubbles) idle_ranks += b * l.dp * l.tp * thr;
    const double fair = p.dedicated_s * l.world() * thr / cores;
    const double denom = cores - machine.wait_cpu * idle_ranks;
    const double spun = denom > 0 ? shared_work * l.dp * l.tp * thr / denom : fair;
    p.shared_s = std::max(p.shared_s, std::min(spun, std::max(fair, p.shared_s)));
  }
  // Ranks sharing cores all compute at once between their collectives, so a rank's compute runs
  // at its share of the cores while its collectives' latencies (measured with the cores busy)
  // add on top: the critical path with compute slowed to that share. The share counts ranks
  // in a bubble as wait_cpu of one; it is 1 with a core per rank (dedicated_s again).
  const double demand = l.world() * thr * ((1 - p.bubble) + p.bubble * machine.wait_cpu);
  const double share = std::min(1.0, cores / std::max(demand, 1e-9));
  if (share < 1) {
    pp::CostModel slowed = costs;
    for (int r = 0; r < l.pp; ++r) {
      const auto i = static_cast<std::size_t>(r);
      for (int c = 0; c < V; ++c) {
        const auto j = static_cast<std::size_t>(c);
        slowed.forward_by_chunk[i][j] += compute_fwd[i][j] * (1 / share - 1);
        slowed.backward_by_chunk[i][j] += compute_bwd[i][j] * (1 / share - 1);
      }
    }
    double path = 0;
    if (l.pp > 1) {
      const pp::SimResult sim = pp::simulate(pp::ScheduleSpec{l.schedule, l.pp, M, V}, slowed);
      TRI_CHECK(sim.ok, "pipeline simulation of {} failed: {}", l.train_flags(), sim.error);
      path = sim.step_time;
    } else {
      path = M * (slowed.forward_by_chunk[0][0] + slowed.backward_by_chunk[0][0]);
    }
    // The update's compute slows to the share; its disk I/O (offload) does not.
    const double opt_slowed = offloaded ? offloaded_update_seconds(p.offload_s, p.optimizer_s / share)
                                        : p.optimizer_s / share;
    p.contended_s = path + tail - opt_wall_max + opt_slowed;
  }
  // The world allreduces wait for the slowest rank, so they add to the step whichever bound
  // holds; over the inter-node link as soon as the world spans nodes.
  const bool multi_node = std::any_of(machine.node_of_rank.begin(), machine.node_of_rank.end(),
                                      [&](int n) { return n != machine.node_of_rank.front(); });
  const double one_sync = machine.world_allreduce_s >= 0 ? machine.world_allreduce_s
                                                         : link(multi_node, 1).allreduce(16.0, l.world());
  // A mixture of experts adds one: the per-layer expert load summed over the world (engine).
  p.sync_s = (machine.step_world_allreduces + (m.is_moe() ? 1 : 0)) * one_sync;
  p.step_s = std::max({p.dedicated_s, p.shared_s, p.contended_s}) + p.sync_s;
  p.tokens_per_s = static_cast<double>(req.batch_size * req.seq_len) / p.step_s;
  return p;
}

}  // namespace trident::plan
