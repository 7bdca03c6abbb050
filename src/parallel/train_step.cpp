// The training step (see train_step.h).
#include "parallel/train_step.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <tuple>

#include "core/check.h"
#include "kernels/kernels.h"
#include "optim/grad_clip.h"

namespace trident::parallel {

namespace {

void zero_grads(RankLayout& L) {
  for (ModelChunk& c : L.chunks()) {
    if (c.dp) {
      c.dp->begin_step();
    } else {
      c.model->params().zero_grads();
    }
  }
}

// pp == 1: forward and backward of each micro-batch; returns the rank's loss sum.
double run_micro_batches(RankLayout& L, const BatchFn& batch, float dloss) {
  const BatchSplit& b = L.batch();
  StepBuffers& buf = L.buffers();
  ModelChunk& c = L.chunks()[0];
  double loss_sum = 0.0;
  for (int m = 0; m < b.micro_batches; ++m) {
    batch(L.first_row() + m * b.micro_rows, b.micro_rows, buf.ids.data(), buf.targets.data());
    // dp: each rank's gradient is its rows' share of the global mean; the reducer sums the
    // buckets over dp as backward produces them (last micro-batch only, or every micro-batch
    // into the shards for ZeRO-2/3) and end_micro_batch waits for what is still in flight.
    if (c.dp) {
      c.dp->set_tokens(buf.ids.data(), b.micro_rows * b.seq_len);
      c.dp->begin_micro_batch(m == b.micro_batches - 1);
    }
    loss_sum += c.model->forward_backward(buf.acts, buf.ids.data(), buf.targets.data(), b.micro_rows,
                                          b.seq_len, dloss);
    if (c.dp) c.dp->end_micro_batch();
  }
  return loss_sum;
}

// After the dp reduction: first-stage tied gradient + last-stage copy's, on both. Every rank
// of the group contributes the elements it owns after the dp reduction -- its ZeRO-2/3
// shard, or (stages 0-1, replicated over dp) dp rank 0 everything -- so the sum counts each
// stage's gradient once and every rank reads back the elements it holds.
void sum_tied_grads(RankLayout& L) {
  comm::Communicator* group = L.tied_group();
  if (!group) return;
  const int p = L.mesh().coord(comm::kPp);
  const ModelChunk& c = p == 0 ? L.chunks().front() : L.chunks().back();
  nn::ParameterSet& ps = c.model->params();
  const int id = ps.find_tied();
  TRI_CHECK(id >= 0, "stage {} holds no tied embedding", p);
  const nn::ParamInfo& info = ps.info(id);
  if (info.frozen) return;  // a LoRA base: not trained, so nothing to sum (both ends see the same config)
  std::vector<float> sum(static_cast<std::size_t>(info.numel), 0.0f);
  // ZeRO-2/3's shard may be 16-bit (--grad-dtype): read widened, the two stages' parts summed
  // in fp32, the sum rounded once into the store.
  GradShard* shard = c.dp ? c.dp->shard_grads() : nullptr;
  int64_t lo = 0, hi = 0, at = 0;
  if (shard) {
    std::tie(lo, hi) = c.dp->layout().mine(info.offset, info.offset + info.numel);
    if (hi > lo) at = c.dp->layout().index(lo);
    shard->read(at, hi - lo, sum.data() + (lo - info.offset));
  } else if (L.mesh().coord(comm::kDp) == 0) {
    std::memcpy(sum.data(), ps.grad(id), sum.size() * sizeof(float));
  }
  group->allreduce(std::span<float>(sum), comm::ReduceOp::kSum).wait();
  if (shard) {
    shard->write(at, hi - lo, sum.data() + (lo - info.offset));
  } else {
    std::memcpy(ps.grad(id), sum.data(), sum.size() * sizeof(float));
  }
}

// pp > 1: the schedule's instruction list over all micro-batches; returns the rank's loss sum.
double run_pipeline(RankLayout& L, const BatchFn& batch, float dloss) {
  const BatchSplit& b = L.batch();
  StepBuffers& buf = L.buffers();
  for (int m = 0; m < b.micro_batches; ++m) {
    const auto k = static_cast<std::size_t>(m);
    batch(L.first_row() + m * b.micro_rows, b.micro_rows, buf.mb_ids[k].data(), buf.mb_targets[k].data());
  }
  // The schedule interleaves micro-batches, so each reducer sees the whole step as one
  // micro-batch: gradients accumulate over all of them and are reduced once they are final.
  for (ModelChunk& c : L.chunks()) {
    if (c.dp) c.dp->begin_micro_batch(true);
  }
  const double loss_sum = L.executor()->run_step(
      [&](int m) {
        const auto k = static_cast<std::size_t>(m);
        return pp::MicroBatch{buf.mb_ids[k].data(), buf.mb_targets[k].data()};
      },
      dloss);
  for (ModelChunk& c : L.chunks()) {
    if (c.dp) c.dp->end_micro_batch();
  }
  sum_tied_grads(L);
  return loss_sum;
}

// Sum of squares of this rank's gradient elements that no other rank also counts.
double local_unique_grad_sumsq(const RankLayout& L) {
  double sum = 0.0;
  for (const ModelChunk& c : L.chunks()) {
    // A frozen parameter (a LoRA base) is not trained: its gradient, where a layer computes one
    // at all, is no part of the norm that clips the trained ones.
    auto counted = [&](int id) { return RankLayout::owns(c, id) && !c.model->params().info(id).frozen; };
    // ZeRO-2/3: each dp rank holds the reduced gradient of its shard only and counts that.
    if (c.dp && L.options().zero >= 2) {
      sum += c.dp->shard_grad_sumsq(counted);
      continue;
    }
    // After the dp allreduce every dp replica holds the same gradient: count dp rank 0's (an
    // expert's: edp rank 0's, the replicas holding that expert).
    // (16-bit gradients at ZeRO 0-1: the reducer's 16-bit flat buffer, same layout.)
    const nn::ParameterSet& ps = c.model->params();
    const GradShard* g16 = c.dp ? c.dp->flat_grads16() : nullptr;
    for (int id = 0; id < ps.size(); ++id) {
      if (!counted(id) || L.replica_coord(ps.info(id)) != 0) continue;
      sum += g16 ? g16->sum_squares(ps.info(id).grad_offset, ps.info(id).numel)
                 : kernels::sum_squares(ps.grad(id), ps.info(id).numel);
    }
  }
  return sum;
}

}  // namespace

StepStats train_step(RankLayout& L, const BatchFn& batch, float lr) {
  zero_grads(L);
  // bf16: the weights are rounded once here (after the last update, init or load) for every
  // product of this step's forwards and backwards; dropped before the update changes them.
  std::optional<WeightCopyScope> copies(std::in_place, L);
  const BatchSplit& b = L.batch();
  // fp16: backward runs on the loss times the scale (a power of two, so scaling and unscaling
  // are exact unless something over- or underflows, which is the point of it) and everything
  // computed from the gradients below divides it out again.
  optim::LossScaler* scaler = L.loss_scaler();
  const double scale = scaler ? scaler->scale() : 1.0;
  const float dloss = 1.0f / static_cast<float>(b.tokens()) * static_cast<float>(scale);
  if (scaler && L.config().is_moe()) {
    for (ModelChunk& c : L.chunks()) c.model->set_moe_loss_weights(L.moe_loss_weights(scale));
  }
  const double loss_sum = L.executor() ? run_pipeline(L, batch, dloss) : run_micro_batches(L, batch, dloss);
  StepStats stats;
  // The squared grad norm and the loss in one world sum (elementwise, so each is summed as
  // alone), both before any update: a poisoned step must be known before it is applied.
  // The aux terms: every stage's layers, every dp rank's sequences, one tp rank's copy.
  nn::MoeLossSums moe_sums;
  for (ModelChunk& c : L.chunks()) moe_sums += c.model->take_moe_loss_sums();
  comm::Communicator& world = L.mesh().world();
  std::vector<double> sums{local_unique_grad_sumsq(L), L.holds_loss() ? loss_sum : 0.0,
                           L.mesh().coord(comm::kTp) == 0 ? moe_sums.aux : 0.0,
                           L.mesh().coord(comm::kTp) == 0 ? moe_sums.z : 0.0,
                           L.mesh().coord(comm::kTp) == 0 ? moe_sums.dropped : 0.0};
  world.allreduce(std::span<double>(sums), comm::ReduceOp::kSum).wait();
  stats.grad_norm = std::sqrt(sums[0]) / scale;
  stats.loss_scale = scaler ? scale : 0.0;
  stats.loss = sums[1] / static_cast<double>(b.tokens());
  // Averaged over the MoE layers (first_k_dense layers have no router).
  const auto moe_layers = static_cast<double>(std::max(1, L.config().moe_layers()));
  stats.aux_loss = sums[2] / (moe_layers * static_cast<double>(b.global_batch));
  stats.z_loss = sums[3] / (moe_layers * static_cast<double>(b.tokens()));
  stats.dropped_fraction =
      sums[4] / (moe_layers * static_cast<double>(b.tokens()) * L.config().n_experts_per_tok);
  if (L.config().is_moe()) {
    // Each layer lives on one stage; every dp rank routes its own tokens; tp ranks alike (one counts).
    const nn::ModelConfig& cfg = L.config();
    stats.expert_load.assign(static_cast<std::size_t>(cfg.n_layer * cfg.n_experts), 0);
    std::vector<int64_t> mine(stats.expert_load.size(), 0);
    for (ModelChunk& c : L.chunks()) c.model->take_expert_load(mine);
    if (L.mesh().coord(comm::kTp) == 0) stats.expert_load = std::move(mine);
    world.allreduce(std::span<int64_t>(stats.expert_load), comm::ReduceOp::kSum).wait();
    // The MoE layers' rows only: the first_k_dense layers route nothing.
    stats.expert_load.erase(stats.expert_load.begin(),
                            stats.expert_load.begin() + static_cast<std::ptrdiff_t>(cfg.first_k_dense) * cfg.n_experts);
    // The routing hashes likewise (wrapping sums add up exactly in any order).
    std::vector<uint64_t> hash(static_cast<std::size_t>(cfg.n_layer), 0);
    for (ModelChunk& c : L.chunks()) c.model->take_routing_hash(hash);
    if (L.mesh().coord(comm::kTp) != 0) std::fill(hash.begin(), hash.end(), 0);
    world.allreduce(std::span<uint64_t>(hash), comm::ReduceOp::kSum).wait();
    stats.routing_hash.assign(hash.begin() + cfg.first_k_dense, hash.end());
  }
  // A NaN or inf on any rank reaches the sums above. Every rank then votes on what it read and
  // the world takes the maximum (exact), so all ranks skip or all update even if an MPI
  // implementation handed different ranks different roundings of an overflowing sum.
  std::vector<int32_t> bad{std::isfinite(stats.loss) && std::isfinite(stats.grad_norm) ? 0 : 1};
  world.allreduce(std::span<int32_t>(bad), comm::ReduceOp::kMax).wait();
  stats.skipped = bad[0] != 0;
  if (scaler) {
    // Every rank holds the same world-reduced verdict, so every scaler takes the same state.
    // At the minimum scale there is nothing left to back off: such a step is poisoned.
    stats.overflow = stats.skipped && std::isfinite(stats.loss) && scale > L.options().loss_scaler.min_scale;
    scaler->update(stats.skipped);
  }
  copies.reset();
  if (stats.skipped) {
    // No update: weights, AdamW moments, its step counter and the router bias stay as they were (the gradients
    // are zeroed by the next step's begin_step). ZeRO-1/2 replicas need no all-gather either,
    // since no shard changed.
    stats.clip_scale = 0.0f;
    return stats;
  }
  stats.clip_scale = optim::clip_scale(stats.grad_norm, L.options().grad_clip);
  // AdamW multiplies the gradients by this: the clip factor and, in fp16, 1 / scale.
  const float grad_factor = stats.clip_scale * static_cast<float>(1.0 / scale);
  for (ModelChunk& c : L.chunks()) {
    if (c.dp) {
      c.dp->optimizer_step(*c.adamw, lr, grad_factor);  // ZeRO: shard update + all_gather
      stats.comm_wait_s += c.dp->comm_wait_seconds();
    } else {
      nn::ParameterSet& ps = c.model->params();
      c.adamw->step(ps.values().data(), ps.grads().data(), lr, grad_factor, optim::AdamW::At::kFlat,
                    optim::AdamW::At::kFlat);
    }
  }
  // Aux-loss-free balancing (nn/moe_router.h): once per applied update, from the world's exact
  // counts, which every rank holds for every layer, so every chunk updates its whole table alike.
  for (ModelChunk& c : L.chunks()) c.model->update_router_bias(stats.expert_load);
  return stats;
}

}  // namespace trident::parallel
