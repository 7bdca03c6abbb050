// The composed training step (see engine.h).
#include "parallel/engine.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>

#include "core/check.h"
#include "kernels/kernels.h"
#include "nn/architecture.h"
#include "optim/grad_clip.h"
#include "parallel/expert_parallel_comm.h"
#include "parallel/pipeline/partition.h"
#include "parallel/tensor_parallel_comm.h"

namespace trident::parallel {

namespace {
// Message tag of the evaluation pipeline: below the executor's range (which starts at 16);
// evaluation never overlaps a training step, and MPI keeps one pair's messages in order.
constexpr int kEvalTag = 1;
}  // namespace

Engine::Engine(comm::Mesh& mesh, const nn::ModelConfig& config, const EngineOptions& options,
               MemoryTracker& tracker, int64_t global_batch, int64_t seq_len)
    : mesh_(mesh), config_(config), options_(options), tracker_(tracker),
      global_batch_(global_batch), seq_len_(seq_len) {
  const comm::MeshShape& shape = mesh.shape();
  config_.validate();
  TRI_CHECK(global_batch % shape.dp == 0,
            "batch size {} is not divisible by dp {}: each data-parallel rank takes batch_size / "
            "dp sequences; use a batch size that is a multiple of {}",
            global_batch, shape.dp, shape.dp);
  rank_rows_ = global_batch / shape.dp;
  micro_batches_ = options.micro_batches;
  TRI_CHECK(micro_batches_ >= 1 && rank_rows_ % micro_batches_ == 0,
            "the {} sequences per data-parallel rank (batch size {} / dp {}) do not split into {} "
            "micro-batches; use a micro-batch count that divides {}",
            rank_rows_, global_batch, shape.dp, micro_batches_, rank_rows_);
  micro_rows_ = rank_rows_ / micro_batches_;
  TRI_CHECK(seq_len >= 1 && seq_len <= config_.n_positions,
            "sequence length {} must be between 1 and the model's n_positions {}", seq_len,
            config_.n_positions);
  validate_tensor_parallel(config_, shape.tp, shape.world());
  TRI_CHECK(options.zero >= 0 && options.zero <= 3, "ZeRO stage {} is not one of 0, 1, 2, 3",
            options.zero);

  // Tensor parallelism: the model issues its tp collectives on the mesh's tp group; the step
  // needs nothing else (replicated parameters counted once below; see nn/model.h).
  nn::TpContext tp;
  if (shape.tp > 1) {
    tp_comm_ = std::make_unique<CommTensorParallel>(mesh_.tp());
    tp = make_tp_context(*tp_comm_, options_.sequence_parallel);
  }
  // Expert parallelism: the MoE layers exchange token rows over the mesh's ep group and hold
  // their ep rank's experts only (nn/moe_mlp.h); expert gradients are reduced over edp below.
  validate_expert_parallel(config_, shape.ep, options_.zero);
  if (shape.ep > 1) {
    ep_comm_ = std::make_unique<CommExpertParallel>(mesh_.ep());
    tp.ep = make_ep_context(*ep_comm_);
  }
  // Pipeline parallelism: this rank's chunks of the layer stack (V of them when interleaved).
  const int V = shape.pp > 1 ? options_.virtual_stages : 1;
  std::vector<nn::StageSpec> stages{nn::StageSpec{}};
  pp::ScheduleSpec spec;
  if (shape.pp > 1) {
    spec.kind = pp::parse_schedule_kind(options_.schedule);
    spec.pp = shape.pp;
    spec.micro_batches = micro_batches_;
    spec.virtual_stages = V;
    spec.validate();
    pp::PartitionOptions po;
    po.pp = shape.pp;
    po.virtual_stages = V;
    if (options_.balance_stages) {
      // Costs in transformer layers, from forward FLOPs per token (backward scales alike): a
      // layer as its declaration counts it, the LM head 2 C V; the embedding is a lookup
      // (negligible).
      const double layer = nn::layer_forward_flops(config_, 1, 1, seq_len_) / static_cast<double>(seq_len_);
      po.balance_cost = true;
      po.embedding_cost = 0.0;
      po.head_cost = 2.0 * config_.n_embd * static_cast<double>(config_.vocab_size) / layer;
    }
    const pp::Partition part = pp::partition_layers(config_.n_layer, po);
    partition_text_ = part.describe();
    if (!partition_text_.empty() && partition_text_.back() == '\n') partition_text_.pop_back();
    stages.clear();
    for (int c = 0; c < V; ++c) stages.push_back(part.chunk(mesh_.coord().pp, c));
  } else {
    TRI_CHECK(options_.virtual_stages == 1,
              "--virtual-stages {} needs pipeline parallelism (--pp > 1) and the interleaved "
              "schedule", options_.virtual_stages);
    TRI_CHECK(!options_.balance_stages,
              "--balance-stages splits layers over pipeline stages; it needs --pp > 1");
  }
  for (const nn::StageSpec& st : stages) {
    Chunk c;
    c.model = std::make_unique<nn::Model>(config_, tp, st);
    c.model->set_recompute(options_.recompute);
    c.model->set_precision(options_.precision);
    c.model->allocate(tracker_);
    // The MoE load-balancing loss: averaged over every layer and every sequence of the
    // global batch, whatever the layout (nn/moe_mlp.h).
    if (config_.is_moe()) {
      aux_loss_weight_ = config_.router_aux_loss_coef / (static_cast<double>(config_.n_layer) * static_cast<double>(global_batch));
      c.model->set_aux_loss_weight(static_cast<float>(aux_loss_weight_));
    }
    if (shape.dp > 1 || options_.zero > 0) {
      c.dp = std::make_unique<DataParallel>(
          c.model->params(), mesh_.dp(), tracker_,
          DataParallelOptions{options_.zero, options_.bucket_mb, options_.overlap, shape.pp > 1,
                              shape.ep > 1 ? &mesh_.edp() : nullptr});
    }
    const int64_t opt_begin = c.dp ? c.dp->optimizer_begin() : 0;
    const int64_t opt_end = c.dp ? c.dp->optimizer_end() : c.model->params().total_numel();
    c.adamw = std::make_unique<optim::AdamW>(
        c.model->params(), tracker_, options_.adamw, opt_begin, opt_end,
        optim::make_moment_store(tracker_, opt_end - opt_begin, options_.offload, mesh_.rank(),
                                 static_cast<int>(chunks_.size())));
    chunks_.push_back(std::move(c));
  }
  if (options_.precision == kernels::Precision::kFp16) loss_scaler_.emplace(options_.loss_scaler);
  if (shape.pp == 1) {
    if (chunks_[0].dp) chunks_[0].model->set_hooks(chunks_[0].dp.get());
    acts_ = chunks_[0].model->make_activations(tracker_, micro_rows_, seq_len_);
    ids_.resize(static_cast<std::size_t>(micro_rows_ * seq_len_));
    targets_.resize(ids_.size());
    return;
  }
  std::vector<nn::Model*> models;
  for (Chunk& c : chunks_) models.push_back(c.model.get());
  pp::ExecutorOptions eo;
  eo.micro_batch_rows = micro_rows_;
  eo.seq_len = seq_len_;
  eo.reduce_tied_grads = false;  // summed after the dp reduction, see sum_tied_embedding_grads
  executor_ = std::make_unique<pp::PipelineExecutor>(mesh_.pp(), models, spec, tracker_, eo);
  std::vector<nn::ModelHooks*> hooks;
  for (Chunk& c : chunks_) hooks.push_back(c.dp.get());
  if (chunks_[0].dp) executor_->set_hooks(hooks);
  for (Chunk& c : chunks_) eval_acts_.push_back(c.model->make_activations(tracker_, micro_rows_, seq_len_));
  mb_ids_.assign(static_cast<std::size_t>(micro_batches_), std::vector<int32_t>(static_cast<std::size_t>(micro_rows_ * seq_len_)));
  mb_targets_ = mb_ids_;
  // The tied embedding's group: first and last stage, same tp coordinate, every dp rank
  // (none when nothing is tied: an untied head's gradient is its own stage's).
  if (!nn::has_tied_embedding(config_)) return;
  const int p = mesh_.coord().pp;
  const bool on_end = p == 0 || p == shape.pp - 1;
  MPI_Comm_split(mesh_.world().mpi_comm(), on_end ? mesh_.coord().tp : MPI_UNDEFINED, mesh_.rank(),
                 &tied_comm_);
  if (on_end) tied_group_ = std::make_unique<comm::Communicator>(tied_comm_, "tied_embedding");
}

Engine::~Engine() {
  executor_.reset();
  tied_group_.reset();
  if (tied_comm_ != MPI_COMM_NULL) MPI_Comm_free(&tied_comm_);
}

std::string Engine::describe() const {
  const comm::MeshShape& s = mesh_.shape();
  std::string text = fmt::format(
      "layout dp {} x tp {} x pp {} (world {}), zero {}; global batch {} x {} tokens, {} "
      "sequences per dp rank in {} micro-batch(es) of {}",
      s.dp, s.tp, s.pp, s.world(), options_.zero, global_batch_, seq_len_, rank_rows_,
      micro_batches_, micro_rows_);
  if (s.ep > 1) {
    text += fmt::format("; expert parallel ep {} (of dp; {} of {} experts per rank)", s.ep,
                        config_.n_experts / s.ep, config_.n_experts);
  }
  if (executor_) {
    text += fmt::format("; schedule {}", executor_->spec().describe());
  }
  if (options_.sequence_parallel) text += ", sequence parallel";
  if (options_.recompute != nn::Recompute::kNone) {
    text += fmt::format(", {} recompute", nn::recompute_name(options_.recompute));
  }
  if (options_.precision != kernels::Precision::kFp32 && !chunks_.empty()) {
    text += "; matmuls: " + chunks_.front().model->matmul().describe();
  }
  if (options_.offload.optimizer && !chunks_.empty()) {
    text += "; AdamW moments " + chunks_.front().adamw->moments().describe();
  }
  if (!partition_text_.empty()) text += "\n" + partition_text_;
  return text;
}

void Engine::initialize(uint64_t seed) {
  for (Chunk& c : chunks_) {
    if (c.dp && c.dp->values_sharded()) {
      c.dp->initialize_shard(seed);  // ZeRO-3: only this rank's shard exists
    } else {
      c.model->params().initialize(seed);
    }
  }
}

bool Engine::owns_for_reduction(const Chunk& c, int id) const {
  const nn::ParamInfo& info = c.model->params().info(id);
  if (!info.tp_owner) return false;
  // The last stage's copy of the tied embedding mirrors the first stage's.
  return !info.tied_copy;
}

double Engine::local_unique_grad_sumsq() const {
  double sum = 0.0;
  for (const Chunk& c : chunks_) {
    // ZeRO-2/3: each dp rank holds the reduced gradient of its shard only and counts that.
    if (c.dp && options_.zero >= 2) {
      sum += c.dp->shard_grad_sumsq([&](int id) { return owns_for_reduction(c, id); });
      continue;
    }
    // After the dp allreduce every dp replica holds the same gradient: count dp rank 0's (an
    // expert's: edp rank 0's, the replicas holding that expert).
    const nn::ParameterSet& ps = c.model->params();
    for (int id = 0; id < ps.size(); ++id) {
      if (!owns_for_reduction(c, id) || replica_coord(ps.info(id)) != 0) continue;
      sum += kernels::sum_squares(ps.grad(id), ps.info(id).numel);
    }
  }
  return sum;
}

int Engine::replica_coord(const nn::ParamInfo& info) const {
  return info.expert >= 0 ? mesh_.edp_coord() : mesh_.coord().dp;
}

bool Engine::holds_loss() const {
  return chunks_.back().model->stage().has_head && mesh_.coord().tp == 0;
}

double Engine::reduce_loss(double local_loss_sum) {
  // Each (dp rank, last stage) holds its rows' loss; tp ranks hold identical copies.
  std::vector<double> v{holds_loss() ? local_loss_sum : 0.0};
  mesh_.world().allreduce(std::span<double>(v), comm::ReduceOp::kSum).wait();
  return v[0] / static_cast<double>(global_batch_ * seq_len_);
}

void Engine::sum_tied_embedding_grads() {
  // After the dp reduction: first-stage tied-embedding gradient + last-stage copy's, on both. Every rank
  // of the group contributes the elements it owns after the dp reduction -- its ZeRO-2/3
  // shard, or (stages 0-1, replicated over dp) dp rank 0 everything -- so the sum counts each
  // stage's gradient once and every rank reads back the elements it holds.
  if (!tied_group_) return;
  const Chunk& c = mesh_.coord().pp == 0 ? chunks_.front() : chunks_.back();
  nn::ParameterSet& ps = c.model->params();
  const int id = ps.find_tied();
  TRI_CHECK(id >= 0, "stage {} holds no tied embedding", mesh_.coord().pp);
  const nn::ParamInfo& info = ps.info(id);
  std::vector<float> sum(static_cast<std::size_t>(info.numel), 0.0f);
  float* shard = c.dp ? c.dp->shard_grads() : nullptr;
  int64_t lo = 0, hi = 0;
  if (shard) {
    std::tie(lo, hi) = c.dp->layout().mine(info.offset, info.offset + info.numel);
    shard += lo - c.dp->layout().begin();
    std::copy(shard, shard + (hi - lo), sum.data() + (lo - info.offset));
  } else if (mesh_.coord().dp == 0) {
    std::memcpy(sum.data(), ps.grad(id), sum.size() * sizeof(float));
  }
  tied_group_->allreduce(std::span<float>(sum), comm::ReduceOp::kSum).wait();
  if (shard) {
    std::copy_n(sum.data() + (lo - info.offset), hi - lo, shard);
  } else {
    std::memcpy(ps.grad(id), sum.data(), sum.size() * sizeof(float));
  }
}

StepStats Engine::train_step(const BatchFn& batch, float lr) {
  for (Chunk& c : chunks_) {
    if (c.dp) {
      c.dp->begin_step();
    } else {
      c.model->params().zero_grads();
    }
  }
  // fp16: backward runs on the loss times the scale (a power of two, so scaling and unscaling
  // are exact unless something over- or underflows, which is the point of it) and everything
  // computed from the gradients below divides it out again.
  const double scale = loss_scaler_ ? loss_scaler_->scale() : 1.0;
  const float dloss = 1.0f / static_cast<float>(global_batch_ * seq_len_) * static_cast<float>(scale);
  if (loss_scaler_ && config_.is_moe()) {
    for (Chunk& c : chunks_) c.model->set_aux_loss_weight(static_cast<float>(aux_loss_weight_ * scale));
  }
  const int64_t row0 = mesh_.coord().dp * rank_rows_;
  double loss_sum = 0.0;
  if (!executor_) {
    Chunk& c = chunks_[0];
    for (int m = 0; m < micro_batches_; ++m) {
      batch(row0 + m * micro_rows_, micro_rows_, ids_.data(), targets_.data());
      // dp: each rank's gradient is its rows' share of the global mean; the reducer sums the
      // buckets over dp as backward produces them (last micro-batch only, or every micro-batch
      // into the shards for ZeRO-2/3) and end_micro_batch waits for what is still in flight.
      if (c.dp) {
        c.dp->set_tokens(ids_.data(), micro_rows_ * seq_len_);
        c.dp->begin_micro_batch(m == micro_batches_ - 1);
      }
      loss_sum += c.model->forward_backward(acts_, ids_.data(), targets_.data(), micro_rows_, seq_len_, dloss);
      if (c.dp) c.dp->end_micro_batch();
    }
  } else {
    for (int m = 0; m < micro_batches_; ++m) {
      batch(row0 + m * micro_rows_, micro_rows_, mb_ids_[static_cast<std::size_t>(m)].data(),
            mb_targets_[static_cast<std::size_t>(m)].data());
    }
    // The schedule interleaves micro-batches, so each reducer sees the whole step as one
    // micro-batch: gradients accumulate over all of them and are reduced once they are final.
    for (Chunk& c : chunks_) {
      if (c.dp) c.dp->begin_micro_batch(true);
    }
    loss_sum = executor_->run_step(
        [&](int m) {
          return pp::MicroBatch{mb_ids_[static_cast<std::size_t>(m)].data(),
                                mb_targets_[static_cast<std::size_t>(m)].data()};
        },
        dloss);
    for (Chunk& c : chunks_) {
      if (c.dp) c.dp->end_micro_batch();
    }
    sum_tied_embedding_grads();
  }
  StepStats stats;
  // The squared grad norm and the loss in one world sum (elementwise, so each is summed as
  // alone), both before any update: a poisoned step must be known before it is applied.
  // The aux terms: every stage's layers, every dp rank's sequences, one tp rank's copy.
  double aux_sum = 0.0;
  for (Chunk& c : chunks_) aux_sum += c.model->take_aux_loss_sum();
  std::vector<double> sums{local_unique_grad_sumsq(), holds_loss() ? loss_sum : 0.0,
                           mesh_.coord().tp == 0 ? aux_sum : 0.0};
  mesh_.world().allreduce(std::span<double>(sums), comm::ReduceOp::kSum).wait();
  stats.grad_norm = std::sqrt(sums[0]) / scale;
  stats.loss_scale = loss_scaler_ ? scale : 0.0;
  stats.loss = sums[1] / static_cast<double>(global_batch_ * seq_len_);
  stats.aux_loss = sums[2] / (static_cast<double>(config_.n_layer) * static_cast<double>(global_batch_));
  if (config_.is_moe()) {
    // Each layer lives on one stage; every dp rank routes its own tokens; tp ranks alike (one counts).
    stats.expert_load.assign(static_cast<std::size_t>(config_.n_layer * config_.n_experts), 0);
    std::vector<int64_t> mine(stats.expert_load.size(), 0);
    for (Chunk& c : chunks_) c.model->take_expert_load(mine);
    if (mesh_.coord().tp == 0) stats.expert_load = std::move(mine);
    mesh_.world().allreduce(std::span<int64_t>(stats.expert_load), comm::ReduceOp::kSum).wait();
  }
  // A NaN or inf on any rank reaches the sums above. Every rank then votes on what it read and
  // the world takes the maximum (exact), so all ranks skip or all update even if an MPI
  // implementation handed different ranks different roundings of an overflowing sum.
  std::vector<int32_t> bad{std::isfinite(stats.loss) && std::isfinite(stats.grad_norm) ? 0 : 1};
  mesh_.world().allreduce(std::span<int32_t>(bad), comm::ReduceOp::kMax).wait();
  stats.skipped = bad[0] != 0;
  if (loss_scaler_) {
    // Every rank holds the same world-reduced verdict, so every scaler takes the same state.
    // At the minimum scale there is nothing left to back off: such a step is poisoned.
    stats.overflow = stats.skipped && std::isfinite(stats.loss) && scale > options_.loss_scaler.min_scale;
    loss_scaler_->update(stats.skipped);
  }
  if (stats.skipped) {
    // No update: weights, AdamW moments and its step counter stay as they were (the gradients
    // are zeroed by the next step's begin_step). ZeRO-1/2 replicas need no all-gather either,
    // since no shard changed.
    stats.clip_scale = 0.0f;
    return stats;
  }
  stats.clip_scale = optim::clip_scale(stats.grad_norm, options_.grad_clip);
  // AdamW multiplies the gradients by this: the clip factor and, in fp16, 1 / scale.
  const float grad_factor = stats.clip_scale * static_cast<float>(1.0 / scale);
  for (Chunk& c : chunks_) {
    if (c.dp) {
      c.dp->optimizer_step(*c.adamw, lr, grad_factor);  // ZeRO: shard update + all_gather
      stats.comm_wait_s += c.dp->comm_wait_seconds();
    } else {
      nn::ParameterSet& ps = c.model->params();
      c.adamw->step(ps.values().data(), ps.grads().data(), lr, grad_factor);
    }
  }
  return stats;
}

double Engine::pipeline_eval_micro_batch(const int32_t* ids, const int32_t* targets) {
  // Forward only, through the global chunks in order: chunk s lives on pp rank s % pp as
  // local chunk s / pp; activations travel with blocking send/recv (no schedule needed).
  const int P = mesh_.shape().pp, me = mesh_.coord().pp;
  const int S = P * static_cast<int>(chunks_.size());
  const int64_t B = micro_rows_, T = seq_len_;
  double loss = 0.0;
  for (int s = 0; s < S; ++s) {
    if (s % P != me) continue;
    const auto k = static_cast<std::size_t>(s / P);
    nn::Model& model = *chunks_[k].model;
    nn::ModelActivations& acts = eval_acts_[k];
    const auto n = static_cast<std::size_t>(model.local_rows(B * T) * config_.n_embd);
    if (s == 0) {
      model.embed_forward(acts, ids, B, T);
    } else {
      mesh_.pp().recv(std::span<float>(acts.stage_input(), n), (s - 1) % P, kEvalTag).wait();
    }
    model.blocks_forward(acts, B, T);
    if (s + 1 < S) {
      mesh_.pp().send(std::span<const float>(acts.stage_output(), n), (s + 1) % P, kEvalTag).wait();
    } else {
      loss = model.head_loss(acts, targets, B, T);
    }
  }
  return loss;
}

double Engine::eval_loss(const BatchFn& batch) {
  const int64_t row0 = mesh_.coord().dp * rank_rows_;
  double loss_sum = 0.0;
  for (int m = 0; m < micro_batches_; ++m) {
    batch(row0 + m * micro_rows_, micro_rows_, ids_.empty() ? mb_ids_[0].data() : ids_.data(),
          targets_.empty() ? mb_targets_[0].data() : targets_.data());
    if (!executor_) {
      loss_sum += chunks_[0].model->forward_loss(acts_, ids_.data(), targets_.data(), micro_rows_, seq_len_);
    } else {
      loss_sum += pipeline_eval_micro_batch(mb_ids_[0].data(), mb_targets_[0].data());
    }
  }
  for (Chunk& c : chunks_) {
    if (c.dp) c.dp->release_all();  // ZeRO-3: drop the groups the forward gathered
  }
  return reduce_loss(loss_sum);
}

namespace {
// Builds the logical tensor on world rank 0 from every rank's contribution: owners write their
// elements (`local`, this rank's local tensor), everyone else (local == nullptr) zeros, and a
// sum over the world (x + 0 == x exactly) assembles it.
void assemble_logical(comm::Mesh& mesh, const nn::ParamInfo& info, const float* local, float* out) {
  const auto n = static_cast<std::size_t>(shape_numel(info.logical_shape));
  // Rank 0 sums straight into `out`; the others into a scratch tensor.
  std::vector<float> scratch;
  float* logical = mesh.rank() == 0 && out ? out : (scratch.resize(n), scratch.data());
  std::fill_n(logical, n, 0.0f);
  if (local) nn::gather_local_to_logical(info, local, logical);
  mesh.world().allreduce(std::span<float>(logical, n), comm::ReduceOp::kSum).wait();
}
}  // namespace

Engine::OwnedParam Engine::owned_param(const std::string& name) {
  // At most one chunk of a rank counts a parameter (the last stage's tied copy never does).
  for (Chunk& c : chunks_) {
    const int id = c.model->params().find(name);
    if (id >= 0 && owns_for_reduction(c, id)) return {&c, id};
  }
  return {};
}

Engine::MomentSlice Engine::moments_of(Chunk& c, int id, int kind, bool read) {
  // The optimizer holds [begin, end) of the flat buffer (everything, or the ZeRO shard).
  const nn::ParamInfo& info = c.model->params().info(id);
  const int64_t lo = std::max(info.offset, c.adamw->begin());
  const int64_t hi = std::max(lo, std::min(info.offset + info.numel, c.adamw->end()));
  if (hi == lo) return {{}, 0, 0, 0};  // not in this rank's range (another ZeRO shard's)
  MomentSlice m{{}, lo - info.offset, hi - lo, lo - c.adamw->begin()};
  if (read) {
    m.data.resize(static_cast<std::size_t>(m.count));
    c.adamw->moments().read(kind, m.store_begin, m.count, m.data.data());
  }
  return m;
}

void Engine::gather_param(const std::string& name, const Shape& logical_shape, float* out) {
  // Every rank takes part, also those that do not hold `name` (another stage does).
  nn::ParamInfo info;
  info.name = name;
  info.logical_shape = logical_shape;
  std::vector<float> shard;
  const float* local = nullptr;
  bool contributes = false;
  if (const OwnedParam p = owned_param(name); p.chunk) {
    info = p.chunk->model->params().info(p.id);
    if (p.chunk->dp && p.chunk->dp->values_sharded()) {
      // ZeRO-3: each dp rank adds its shard's elements (zeros elsewhere).
      shard.assign(static_cast<std::size_t>(info.numel), 0.0f);
      p.chunk->dp->read_shard_values(p.id, shard.data());
      local = shard.data();
      contributes = true;
    } else {
      local = p.chunk->model->params().data(p.id);
      contributes = replica_coord(info) == 0;
    }
  }
  assemble_logical(mesh_, info, contributes ? local : nullptr, out);
}

void Engine::gather_optimizer_state(const std::string& name, const Shape& logical_shape, int kind,
                                    float* out) {
  nn::ParamInfo info;
  info.name = name;
  info.logical_shape = logical_shape;
  std::vector<float> padded;
  const float* local = nullptr;
  bool contributes = false;
  if (const OwnedParam p = owned_param(name); p.chunk) {
    info = p.chunk->model->params().info(p.id);
    MomentSlice m = moments_of(*p.chunk, p.id, kind);
    if (m.local_begin == 0 && m.count == info.numel) {
      padded = std::move(m.data);  // the whole local tensor
    } else {
      padded.assign(static_cast<std::size_t>(info.numel), 0.0f);
      std::copy_n(m.data.data(), m.count, padded.data() + m.local_begin);
    }
    local = padded.data();
    // ZeRO >= 1: every dp rank adds its shard (zeros elsewhere); otherwise dp rank 0's copy.
    contributes = options_.zero >= 1 || replica_coord(info) == 0;
  }
  assemble_logical(mesh_, info, contributes ? local : nullptr, out);
}

void Engine::load_param(const std::string& name, const float* logical) {
  for (Chunk& c : chunks_) {
    nn::ParameterSet& ps = c.model->params();
    const int id = ps.find(name);
    if (id < 0) continue;  // held by another stage
    if (c.dp && c.dp->values_sharded()) {
      std::vector<float> local(static_cast<std::size_t>(ps.info(id).numel));
      nn::scatter_logical_to_local(ps.info(id), logical, local.data());
      c.dp->write_shard_values(id, local.data());
    } else {
      nn::scatter_logical_to_local(ps.info(id), logical, ps.data(id));
    }
  }
}

void Engine::load_optimizer_state(const std::string& name, int kind, const float* logical) {
  for (Chunk& c : chunks_) {
    const int id = c.model->params().find(name);
    if (id < 0) continue;
    std::vector<float> local(static_cast<std::size_t>(c.model->params().info(id).numel));
    nn::scatter_logical_to_local(c.model->params().info(id), logical, local.data());
    const MomentSlice m = moments_of(c, id, kind, /*read=*/false);
    c.adamw->moments().write(kind, m.store_begin, m.count, local.data() + m.local_begin);
  }
}

namespace {
// Index of the first non-finite of n floats, or -1.
int64_t first_nonfinite(const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(x[i])) return i;
  }
  return -1;
}
}  // namespace

std::string Engine::find_nonfinite_state() {
  std::string mine;
  for (Chunk& c : chunks_) {
    const nn::ParameterSet& ps = c.model->params();
    std::vector<float> shard;
    for (int id = 0; id < ps.size() && mine.empty(); ++id) {
      const nn::ParamInfo& info = ps.info(id);
      const float* values = ps.data(id);
      if (c.dp && c.dp->values_sharded()) {  // ZeRO-3: only the shard is this rank's
        shard.assign(static_cast<std::size_t>(info.numel), 0.0f);
        c.dp->read_shard_values(id, shard.data());
        values = shard.data();
      }
      if (const int64_t i = first_nonfinite(values, info.numel); i >= 0) {
        mine = fmt::format("{} (weights), local element {}, value {}", info.name, i, values[i]);
        break;
      }
      for (int kind = 0; kind < 2; ++kind) {
        const MomentSlice m = moments_of(c, id, kind);
        if (const int64_t i = first_nonfinite(m.data.data(), m.count); i >= 0) {
          mine = fmt::format("{} ({}), local element {}, value {}", info.name,
                             kind == 0 ? "exp_avg" : "exp_avg_sq", m.local_begin + i, m.data[i]);
          break;
        }
      }
    }
    if (!mine.empty()) break;
  }
  // The lowest rank that found one tells everyone what it found.
  comm::Communicator& world = mesh_.world();
  std::vector<int32_t> first{mine.empty() ? world.size() : world.rank()};
  world.allreduce(std::span<int32_t>(first), comm::ReduceOp::kMin).wait();
  if (first[0] == world.size()) return {};
  std::vector<uint8_t> text(256, 0);
  if (world.rank() == first[0]) std::copy_n(mine.begin(), std::min(mine.size(), text.size() - 1), text.begin());
  world.broadcast(std::span<uint8_t>(text), first[0]).wait();
  return fmt::format("{} on rank {}", reinterpret_cast<const char*>(text.data()), first[0]);
}

int64_t Engine::optimizer_step() const { return chunks_.front().adamw->step_count(); }

void Engine::set_optimizer_step(int64_t t) {
  for (Chunk& c : chunks_) c.adamw->set_step_count(t);
}

void Engine::restore_loss_scaler(const optim::LossScalerState& state) {
  TRI_CHECK(loss_scaler_.has_value(), "a loss-scaler state can only be restored into an fp16 run");
  loss_scaler_->restore(state);
}

}  // namespace trident::parallel
