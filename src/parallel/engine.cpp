// The composed training step (see engine.h).
#include "parallel/engine.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/check.h"
#include "kernels/kernels.h"
#include "optim/grad_clip.h"
#include "parallel/tensor_parallel_comm.h"

namespace trident::parallel {

Engine::Engine(comm::Mesh& mesh, const nn::GPTConfig& config, const EngineOptions& options,
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
  TRI_CHECK(shape.pp == 1, "pipeline parallelism (pp {}) is not wired into the engine yet", shape.pp);
  TRI_CHECK(options.zero >= 0 && options.zero <= 3, "ZeRO stage {} is not one of 0, 1, 2, 3",
            options.zero);

  // Tensor parallelism: the model issues its tp collectives on the mesh's tp group; the step
  // needs nothing else (replicated parameters counted once below; see nn/gpt.h).
  nn::TpContext tp;
  if (shape.tp > 1) {
    tp_comm_ = std::make_unique<CommTensorParallel>(mesh_.tp());
    tp = make_tp_context(*tp_comm_, options_.sequence_parallel);
  }
  model_ = std::make_unique<nn::GPT>(config_, tp);
  model_->allocate(tracker_);
  if (shape.dp > 1 || options_.zero > 0) {
    dp_ = std::make_unique<DataParallel>(
        model_->params(), mesh_.dp(), tracker_,
        DataParallelOptions{options_.zero, options_.bucket_mb, options_.overlap});
    model_->set_hooks(dp_.get());
    adamw_ = std::make_unique<optim::AdamW>(model_->params(), tracker_, options_.adamw,
                                            dp_->optimizer_begin(), dp_->optimizer_end());
  } else {
    adamw_ = std::make_unique<optim::AdamW>(model_->params(), tracker_, options_.adamw);
  }
  acts_ = model_->make_activations(tracker_, micro_rows_, seq_len_);
  ids_.resize(static_cast<std::size_t>(micro_rows_ * seq_len_));
  targets_.resize(ids_.size());
}

Engine::~Engine() = default;

std::string Engine::describe() const {
  const comm::MeshShape& s = mesh_.shape();
  return fmt::format(
      "layout dp {} x tp {} x pp {} (world {}), zero {}; global batch {} x {} tokens, {} "
      "sequences per dp rank in {} micro-batch(es) of {}",
      s.dp, s.tp, s.pp, s.world(), options_.zero, global_batch_, seq_len_, rank_rows_,
      micro_batches_, micro_rows_);
}

void Engine::initialize(uint64_t seed) {
  if (dp_ && dp_->values_sharded()) {
    dp_->initialize_shard(seed);  // ZeRO-3: only this rank's shard exists
  } else {
    model_->params().initialize(seed);
  }
}

bool Engine::owns_for_reduction(int id) const {
  const nn::ParamInfo& info = model_->params().info(id);
  if (info.tp_replicated && mesh_.coord().tp != 0) return false;
  // The last stage's copy of the tied embedding mirrors the first stage's.
  const nn::StageSpec& st = model_->stage();
  if (info.name == "wte.weight" && !st.has_embedding) return false;
  return true;
}

double Engine::local_unique_grad_sumsq() const {
  // ZeRO-2/3: each dp rank holds the reduced gradient of its shard only and counts that.
  if (dp_ && options_.zero >= 2) {
    return dp_->shard_grad_sumsq([this](int id) { return owns_for_reduction(id); });
  }
  // After the dp allreduce every dp replica holds the same gradient: count dp rank 0's.
  if (mesh_.coord().dp != 0) return 0.0;
  const nn::ParameterSet& ps = model_->params();
  double sum = 0.0;
  for (int id = 0; id < ps.size(); ++id) {
    if (!owns_for_reduction(id)) continue;
    sum += kernels::sum_squares(ps.grad(id), ps.info(id).numel);
  }
  return sum;
}

double Engine::reduce_loss(double local_loss_sum) {
  // Each (dp rank, last stage) holds its rows' loss; tp ranks hold identical copies.
  const bool counts = model_->stage().has_head && mesh_.coord().tp == 0;
  std::vector<double> v{counts ? local_loss_sum : 0.0};
  mesh_.world().allreduce(std::span<double>(v), comm::ReduceOp::kSum).wait();
  return v[0] / static_cast<double>(global_batch_ * seq_len_);
}

StepStats Engine::train_step(const BatchFn& batch, float lr) {
  nn::ParameterSet& ps = model_->params();
  if (dp_) {
    dp_->begin_step();
  } else {
    ps.zero_grads();
  }
  const float dloss = 1.0f / static_cast<float>(global_batch_ * seq_len_);
  const int64_t row0 = mesh_.coord().dp * rank_rows_;
  double loss_sum = 0.0;
  for (int m = 0; m < micro_batches_; ++m) {
    batch(row0 + m * micro_rows_, micro_rows_, ids_.data(), targets_.data());
    // dp: each rank's gradient is its rows' share of the global mean; the reducer sums the
    // buckets over dp as backward produces them (last micro-batch only, or every micro-batch
    // into the shards for ZeRO-2/3) and end_micro_batch waits for what is still in flight.
    if (dp_) {
      dp_->set_tokens(ids_.data(), micro_rows_ * seq_len_);
      dp_->begin_micro_batch(m == micro_batches_ - 1);
    }
    loss_sum += model_->forward_backward(acts_, ids_.data(), targets_.data(), micro_rows_, seq_len_, dloss);
    if (dp_) dp_->end_micro_batch();
  }
  StepStats stats;
  std::vector<double> sq{local_unique_grad_sumsq()};
  mesh_.world().allreduce(std::span<double>(sq), comm::ReduceOp::kSum).wait();
  stats.grad_norm = std::sqrt(sq[0]);
  stats.clip_scale = optim::clip_scale(stats.grad_norm, options_.grad_clip);
  if (dp_) {
    dp_->optimizer_step(*adamw_, lr, stats.clip_scale);  // ZeRO: shard update + all_gather
    stats.comm_wait_s = dp_->comm_wait_seconds();
  } else {
    adamw_->step(ps.values().data(), ps.grads().data(), lr, stats.clip_scale);
  }
  stats.loss = reduce_loss(loss_sum);
  return stats;
}

double Engine::eval_loss(const BatchFn& batch) {
  const int64_t row0 = mesh_.coord().dp * rank_rows_;
  double loss_sum = 0.0;
  for (int m = 0; m < micro_batches_; ++m) {
    batch(row0 + m * micro_rows_, micro_rows_, ids_.data(), targets_.data());
    loss_sum += model_->forward_loss(acts_, ids_.data(), targets_.data(), micro_rows_, seq_len_);
  }
  if (dp_) dp_->release_all();  // ZeRO-3: drop the groups the forward gathered
  return reduce_loss(loss_sum);
}

namespace {
// Builds the logical tensor on world rank 0 from every rank's contribution: owners write their
// elements, everyone else zeros, and a sum over the world (x + 0 == x exactly) assembles it.
void assemble_logical(comm::Mesh& mesh, const nn::ParamInfo& info, const float* local,
                      bool contributes, float* out) {
  const auto n = static_cast<std::size_t>(shape_numel(info.logical_shape));
  std::vector<float> logical(n, 0.0f);
  if (contributes && local) nn::gather_local_to_logical(info, local, logical.data());
  mesh.world().allreduce(std::span<float>(logical), comm::ReduceOp::kSum).wait();
  if (mesh.rank() == 0 && out) std::memcpy(out, logical.data(), n * sizeof(float));
}
}  // namespace

void Engine::gather_param(const std::string& name, const Shape& logical_shape, float* out) {
  nn::ParameterSet& ps = model_->params();
  const int id = ps.find(name);
  // Every rank takes part, also those that do not hold `name` (another stage does).
  nn::ParamInfo info;
  info.name = name;
  info.logical_shape = logical_shape;
  if (id >= 0) info = ps.info(id);
  if (id >= 0 && dp_ && dp_->values_sharded()) {
    // ZeRO-3: each dp rank adds its shard's elements (zeros elsewhere).
    std::vector<float> local(static_cast<std::size_t>(info.numel));
    dp_->read_shard_values(id, local.data());
    assemble_logical(mesh_, info, local.data(), owns_for_reduction(id), out);
    return;
  }
  const bool contributes = id >= 0 && mesh_.coord().dp == 0 && owns_for_reduction(id);
  assemble_logical(mesh_, info, id >= 0 ? ps.data(id) : nullptr, contributes, out);
}

void Engine::gather_optimizer_state(const std::string& name, const Shape& logical_shape, int kind,
                                    float* out) {
  nn::ParameterSet& ps = model_->params();
  const int id = ps.find(name);
  nn::ParamInfo info;
  info.name = name;
  info.logical_shape = logical_shape;
  std::vector<float> local;
  if (id >= 0) {
    info = ps.info(id);
    // The moments of [offset, offset + numel) this rank holds (all, or its ZeRO shard).
    const FloatBuffer& state = kind == 0 ? adamw_->exp_avg() : adamw_->exp_avg_sq();
    local.assign(static_cast<std::size_t>(info.numel), 0.0f);
    const int64_t lo = std::max(info.offset, adamw_->begin());
    const int64_t hi = std::min(info.offset + info.numel, adamw_->end());
    for (int64_t i = lo; i < hi; ++i) {
      local[static_cast<std::size_t>(i - info.offset)] = state[static_cast<std::size_t>(i - adamw_->begin())];
    }
  }
  // ZeRO >= 1: every dp rank adds its shard (zeros elsewhere); otherwise dp rank 0's copy.
  const bool sharded = options_.zero >= 1;
  const bool contributes = id >= 0 && (sharded || mesh_.coord().dp == 0) && owns_for_reduction(id);
  assemble_logical(mesh_, info, id >= 0 ? local.data() : nullptr, contributes, out);
}

void Engine::load_param(const std::string& name, const float* logical) {
  nn::ParameterSet& ps = model_->params();
  const int id = ps.find(name);
  if (id < 0) return;  // held by another stage
  if (dp_ && dp_->values_sharded()) {
    std::vector<float> local(static_cast<std::size_t>(ps.info(id).numel));
    nn::scatter_logical_to_local(ps.info(id), logical, local.data());
    dp_->write_shard_values(id, local.data());
    return;
  }
  nn::scatter_logical_to_local(ps.info(id), logical, ps.data(id));
}

void Engine::load_optimizer_state(const std::string& name, int kind, const float* logical) {
  nn::ParameterSet& ps = model_->params();
  const int id = ps.find(name);
  if (id < 0) return;
  const nn::ParamInfo& info = ps.info(id);
  FloatBuffer& state = kind == 0 ? adamw_->exp_avg() : adamw_->exp_avg_sq();
  std::vector<float> local(static_cast<std::size_t>(info.numel));
  nn::scatter_logical_to_local(info, logical, local.data());
  const int64_t lo = std::max(info.offset, adamw_->begin());
  const int64_t hi = std::min(info.offset + info.numel, adamw_->end());
  for (int64_t i = lo; i < hi; ++i) {
    state[static_cast<std::size_t>(i - adamw_->begin())] = local[static_cast<std::size_t>(i - info.offset)];
  }
}

int64_t Engine::optimizer_step() const { return adamw_->step_count(); }
void Engine::set_optimizer_step(int64_t t) { adamw_->set_step_count(t); }

}  // namespace trident::parallel
