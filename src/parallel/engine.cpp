// The composed training step (see engine.h).
#include "parallel/engine.h"

#include <fmt/format.h>

#include <cmath>
#include <cstring>

#include "core/check.h"
#include "kernels/kernels.h"
#include "optim/grad_clip.h"

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
  TRI_CHECK(shape.tp == 1, "tensor parallelism (tp {}) is not wired into the engine yet", shape.tp);
  TRI_CHECK(shape.pp == 1, "pipeline parallelism (pp {}) is not wired into the engine yet", shape.pp);
  TRI_CHECK(options.zero == 0, "ZeRO stage {} is not wired into the engine yet", options.zero);

  model_ = std::make_unique<nn::GPT>(config_);
  model_->allocate(tracker_);
  adamw_ = std::make_unique<optim::AdamW>(model_->params(), tracker_, options_.adamw);
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

void Engine::initialize(uint64_t seed) { model_->params().initialize(seed); }

bool Engine::owns_for_reduction(int id) const {
  const nn::ParamInfo& info = model_->params().info(id);
  if (info.tp_replicated && mesh_.coord().tp != 0) return false;
  // The last stage's copy of the tied embedding mirrors the first stage's.
  const nn::StageSpec& st = model_->stage();
  if (info.name == "wte.weight" && !st.has_embedding) return false;
  return true;
}

double Engine::local_unique_grad_sumsq() const {
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
  ps.zero_grads();
  const float dloss = 1.0f / static_cast<float>(global_batch_ * seq_len_);
  const int64_t row0 = mesh_.coord().dp * rank_rows_;
  double loss_sum = 0.0;
  for (int m = 0; m < micro_batches_; ++m) {
    batch(row0 + m * micro_rows_, micro_rows_, ids_.data(), targets_.data());
    loss_sum += model_->forward_backward(acts_, ids_.data(), targets_.data(), micro_rows_, seq_len_, dloss);
  }
  if (mesh_.shape().dp > 1) {
    // Each rank's gradient is its rows' share of the global mean: summing gives the mean.
    mesh_.dp().allreduce(std::span<float>(ps.grads().data(), ps.grads().size()), comm::ReduceOp::kSum).wait();
  }
  StepStats stats;
  std::vector<double> sq{local_unique_grad_sumsq()};
  mesh_.world().allreduce(std::span<double>(sq), comm::ReduceOp::kSum).wait();
  stats.grad_norm = std::sqrt(sq[0]);
  stats.clip_scale = optim::clip_scale(stats.grad_norm, options_.grad_clip);
  adamw_->step(ps.values().data(), ps.grads().data(), lr, stats.clip_scale);
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
  const float* local = nullptr;
  if (id >= 0) {
    info = ps.info(id);
    const FloatBuffer& state = kind == 0 ? adamw_->exp_avg() : adamw_->exp_avg_sq();
    local = state.data() + (info.offset - adamw_->begin());
  }
  const bool contributes = id >= 0 && mesh_.coord().dp == 0 && owns_for_reduction(id);
  assemble_logical(mesh_, info, local, contributes, out);
}

void Engine::load_param(const std::string& name, const float* logical) {
  nn::ParameterSet& ps = model_->params();
  const int id = ps.find(name);
  if (id < 0) return;  // held by another stage
  nn::scatter_logical_to_local(ps.info(id), logical, ps.data(id));
}

void Engine::load_optimizer_state(const std::string& name, int kind, const float* logical) {
  nn::ParameterSet& ps = model_->params();
  const int id = ps.find(name);
  if (id < 0) return;
  const nn::ParamInfo& info = ps.info(id);
  FloatBuffer& state = kind == 0 ? adamw_->exp_avg() : adamw_->exp_avg_sq();
  nn::scatter_logical_to_local(info, logical, state.data() + (info.offset - adamw_->begin()));
}

int64_t Engine::optimizer_step() const { return adamw_->step_count(); }
void Engine::set_optimizer_step(int64_t t) { adamw_->set_step_count(t); }

}  // namespace trident::parallel
