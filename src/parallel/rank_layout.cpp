// Building what one rank holds (see rank_layout.h).
#include "parallel/rank_layout.h"

#include <fmt/format.h>

#include "core/check.h"
#include "nn/architecture.h"
#include "parallel/expert_parallel_comm.h"
#include "parallel/pipeline/partition.h"
#include "parallel/tensor_parallel_comm.h"

namespace trident::parallel {

RankLayout::RankLayout(comm::Mesh& mesh, const nn::ModelConfig& config, const EngineOptions& options,
                       MemoryTracker& tracker, int64_t global_batch, int64_t seq_len, int micro_batches)
    : mesh_(mesh), config_(config), options_(options), tracker_(tracker) {
  const comm::MeshShape& shape = mesh.shape();
  const int dp = shape.size(comm::kDp), tp_size = shape.size(comm::kTp), pp_size = shape.size(comm::kPp),
            ep_size = shape.size(comm::kEp);
  config_.validate();
  TRI_CHECK(global_batch % dp == 0,
            "batch size {} is not divisible by dp {}: each data-parallel rank takes batch_size / "
            "dp sequences; use a batch size that is a multiple of {}",
            global_batch, dp, dp);
  BatchSplit& b = batch_;
  b.global_batch = global_batch;
  b.seq_len = seq_len;
  b.rank_rows = global_batch / dp;
  b.micro_batches = micro_batches;
  TRI_CHECK(micro_batches >= 1 && b.rank_rows % micro_batches == 0,
            "the {} sequences per data-parallel rank (batch size {} / dp {}) do not split into {} "
            "micro-batches; use a micro-batch count that divides {}",
            b.rank_rows, global_batch, dp, micro_batches, b.rank_rows);
  b.micro_rows = b.rank_rows / micro_batches;
  nn::check_sequence_length(config_, seq_len);
  validate_tensor_parallel(config_, tp_size, shape.world());
  TRI_CHECK(options.zero >= 0 && options.zero <= 3, "ZeRO stage {} is not one of 0, 1, 2, 3",
            options.zero);
  // A packed base (QLoRA, quant/packed_base.h) is replicated on every dp rank and takes no room in
  // the flat buffers ZeRO shards (numel 0): ZeRO-2 points gradients at buckets of those buffers,
  // ZeRO-3 values at gathered groups of them, and both leave a packed matrix's pointer to the
  // packed base (DataParallel skips ParamInfo::packed), so every stage shards the adapters' state.
  TRI_CHECK(!options.stochastic_rounding || options.precision == kernels::Precision::kBf16,
            "--stochastic-rounding rounds the bf16 copy of the weights; it needs --precision bf16, not {} "
            "(fp32 keeps no low-precision copy, fp16 rounds per product)",
            kernels::precision_names()[static_cast<std::size_t>(options.precision)]);

  // Tensor parallelism: the model issues its tp collectives on the mesh's tp group; the step
  // needs nothing else (replicated parameters counted once, see owns()).
  nn::TpContext tp;
  if (tp_size > 1) {
    tp_comm_ = std::make_unique<CommTensorParallel>(mesh_.tp());
    tp = make_tp_context(*tp_comm_, options_.sequence_parallel);
  }
  // Expert parallelism: the MoE layers exchange token rows over the mesh's ep group and hold
  // their ep rank's experts only (nn/moe_mlp.h); expert gradients are reduced over edp.
  validate_expert_parallel(config_, ep_size);
  if (ep_size > 1) {
    ep_comm_ = std::make_unique<CommExpertParallel>(mesh_.ep());
    tp.ep = make_ep_context(*ep_comm_);
  }
  // Checked here, on the run's final options (a resume restores --zero from its checkpoint).
  TRI_CHECK(!options_.offload.params() || options_.zero == 3,
            "--offload optimizer+params offloads ZeRO-3's parameter shards (as DeepSpeed's offload_param, "
            "which also needs stage 3): add --zero 3 (this run has --zero {}), or use --offload optimizer",
            options_.zero);
  {
    const std::string_view g = grad_dtype_names()[static_cast<std::size_t>(options_.grad_dtype)];
    TRI_CHECK(grad_dtype_fits(options_.grad_dtype, options_.precision),
              "--grad-dtype {} needs --precision {} (this run has --precision {}): 16-bit gradients are stored in "
              "the precision the matmuls round to (bf16 with bf16, fp16 with fp16); use --grad-dtype fp32 or "
              "--precision {}",
              g, g, kernels::precision_names()[static_cast<std::size_t>(options_.precision)], g);
    TRI_CHECK(options_.grad_dtype == GradDType::kFp32 || options_.zero >= 2 || pp_size == 1,
              "--grad-dtype {} at --zero {} with --pp {} is not implemented: ZeRO 0-1 keep 16-bit gradients "
              "with one layer group's fp32 working buffer, which the pipeline's interleaved backwards would "
              "need per micro-batch in flight; use --zero 2 or 3 (their gradient shard is 16-bit under any "
              "pipeline), or --grad-dtype fp32",
              g, options_.zero, pp_size);
  }
  // Pipeline parallelism: this rank's chunks of the layer stack (V of them when interleaved).
  const int V = pp_size > 1 ? options_.virtual_stages : 1;
  std::vector<nn::StageSpec> stages{nn::StageSpec{}};
  pp::ScheduleSpec spec;
  if (pp_size > 1) {
    spec.kind = options_.schedule;
    spec.pp = pp_size;
    spec.micro_batches = micro_batches;
    spec.virtual_stages = V;
    spec.validate();
    pp::PartitionOptions po;
    po.pp = pp_size;
    po.virtual_stages = V;
    if (options_.balance_stages) {
      // Costs from forward FLOPs per token as the architecture declares them for each layer
      // (backward scales alike), in units of the last layer (an MoE layer when any is, so
      // first_k_dense layers weigh what their dense MLP costs); the embedding is a lookup
      // (negligible).
      const double unit = nn::layer_forward_flops(config_, 1, 1, seq_len, config_.n_layer - 1);
      po.balance_cost = true;
      po.embedding_cost = 0.0;
      po.head_cost = nn::head_forward_flops(config_, 1, 1, 1) / (unit / static_cast<double>(seq_len));
      for (int l = 0; l < config_.n_layer; ++l) {
        po.layer_costs.push_back(nn::layer_forward_flops(config_, 1, 1, seq_len, l) / unit);
      }
    }
    const pp::Partition part = pp::partition_layers(config_.n_layer, po);
    partition_text_ = part.describe();
    if (!partition_text_.empty() && partition_text_.back() == '\n') partition_text_.pop_back();
    stages.clear();
    for (int c = 0; c < V; ++c) stages.push_back(part.chunk(mesh_.coord(comm::kPp), c));
  } else {
    TRI_CHECK(options_.virtual_stages == 1,
              "--virtual-stages {} needs pipeline parallelism (--pp > 1) and the interleaved "
              "schedule", options_.virtual_stages);
    TRI_CHECK(!options_.balance_stages,
              "--balance-stages splits layers over pipeline stages; it needs --pp > 1");
  }
  for (const nn::StageSpec& st : stages) {
    ModelChunk c;
    c.model = std::make_unique<nn::Model>(config_, tp, st);
    c.model->set_recompute(options_.recompute);
    c.model->set_precision(options_.precision);
    // ZeRO-3 keeps a shard of the values, ZeRO-2/3 one of the gradients (the reducer below
    // makes them): the flat buffers are not made at all, so the start-up peak is the steps'.
    // With 16-bit gradients ZeRO 0-1's flat gradients are the reducer's 16-bit store instead.
    const bool grad16 = options_.grad_dtype != GradDType::kFp32;
    c.model->allocate(tracker_, nn::FlatBuffers{options_.zero < 3, options_.zero < 2 && !grad16});
    // The MoE load-balancing loss: averaged over every MoE layer and every sequence of the
    // global batch, whatever the layout (nn/moe_mlp.h).
    if (config_.is_moe()) {
      const auto layers = static_cast<double>(config_.moe_layers());  // the dense ones have no router
      aux_loss_weight_ = config_.router_aux_loss_coef / (layers * static_cast<double>(global_batch));
      z_loss_weight_ = config_.router_z_loss_coef / (layers * static_cast<double>(global_batch * seq_len));
      c.model->set_moe_loss_weights(moe_loss_weights(1.0));
    }
    if (dp > 1 || options_.zero > 0 || grad16) {  // 16-bit gradients live in the reducer
      const bool master = options_.shard_master && shards_master(options_.zero, options_.precision, config_.lora.enabled());
      c.dp = std::make_unique<DataParallel>(
          c.model->params(), mesh_.dp(), tracker_,
          DataParallelOptions{options_.zero, options_.bucket_mb, options_.overlap, pp_size > 1,
                              ep_size > 1 ? &mesh_.edp() : nullptr, options_.grad_reduce_dtype, options_.grad_dtype,
                              options_.offload.params(),
                              master, master && options_.offload.optimizer()});
    }
    const std::vector<FlatRange> owned =
        c.dp ? c.dp->optimizer_ranges() : std::vector<FlatRange>{{0, c.model->params().total_numel()}};
    // --offload optimizer under the sharded master: its shard goes into the store's values part.
    ShardedMaster* offloaded_master = c.dp && c.dp->options().offload_master ? c.dp->master() : nullptr;
    c.adamw = std::make_unique<optim::AdamW>(
        c.model->params(), tracker_, options_.adamw, owned,
        optim::make_moment_store(tracker_, optim::AdamW::moment_count(c.model->params(), owned),
                                 options_.offload, mesh_.rank(), static_cast<int>(chunks_.size()),
                                 offloaded_master ? offloaded_master->store_runs() : optim::ValueRuns{}));
    if (options_.offload.params()) c.dp->attach_value_store(c.adamw->moments());
    if (offloaded_master) offloaded_master->attach_store(c.adamw->moments());
    if (config_.packed_base()) {
      c.packed = std::make_unique<quant::PackedBase>(c.model->params(), tracker_);
      c.packed->set_inner(c.dp.get());
    }
    chunks_.push_back(std::move(c));
  }
  if (options_.precision == kernels::Precision::kFp16) loss_scaler_.emplace(options_.loss_scaler);
  if (pp_size == 1) {
    if (chunks_[0].hooks()) chunks_[0].model->set_hooks(chunks_[0].hooks());
    buffers_.acts = chunks_[0].model->make_activations(tracker_, b.micro_rows, seq_len);
    buffers_.ids.resize(static_cast<std::size_t>(b.micro_rows * seq_len));
    buffers_.targets.resize(buffers_.ids.size());
    return;
  }
  build_pipeline(spec);
}

void RankLayout::build_pipeline(const pp::ScheduleSpec& spec) {
  const BatchSplit& b = batch_;
  std::vector<nn::Model*> models;
  for (ModelChunk& c : chunks_) models.push_back(c.model.get());
  pp::ExecutorOptions eo;
  eo.micro_batch_rows = b.micro_rows;
  eo.seq_len = b.seq_len;
  eo.reduce_tied_grads = false;  // summed after the dp reduction (train_step.cpp)
  executor_ = std::make_unique<pp::PipelineExecutor>(mesh_.pp(), models, spec, tracker_, eo);
  std::vector<nn::ModelHooks*> hooks;
  for (ModelChunk& c : chunks_) hooks.push_back(c.hooks());
  if (chunks_[0].hooks()) executor_->set_hooks(hooks);
  for (ModelChunk& c : chunks_) {
    buffers_.eval_acts.push_back(c.model->make_activations(tracker_, b.micro_rows, b.seq_len));
  }
  buffers_.mb_ids.assign(static_cast<std::size_t>(b.micro_batches),
                         std::vector<int32_t>(static_cast<std::size_t>(b.micro_rows * b.seq_len)));
  buffers_.mb_targets = buffers_.mb_ids;
  // The tied parameter's group: first and last stage, same tp coordinate, every dp rank
  // (none when nothing is tied: an untied head's gradient is its own stage's).
  if (!nn::has_tied_embedding(config_)) return;
  const int p = mesh_.coord(comm::kPp);
  const bool on_end = p == 0 || p == mesh_.shape().size(comm::kPp) - 1;
  tied_group_ = mesh_.world().split(on_end ? mesh_.coord(comm::kTp) : -1, mesh_.rank(), "tied_embedding");
}

RankLayout::~RankLayout() {
  executor_.reset();
  tied_group_.reset();
}

bool RankLayout::owns(const ModelChunk& chunk, int id) {
  const nn::ParamInfo& info = chunk.model->params().info(id);
  if (!info.tp_owner) return false;
  // The last stage's copy of a tied parameter mirrors the first stage's.
  return !info.tied_copy;
}

int RankLayout::replica_coord(const nn::ParamInfo& info) const {
  return info.expert >= 0 ? mesh_.coord(comm::kEdp) : mesh_.coord(comm::kDp);
}

void RankLayout::restore_loss_scaler(const optim::LossScalerState& state) {
  TRI_CHECK(loss_scaler_.has_value(), "a loss-scaler state can only be restored into an fp16 run");
  loss_scaler_->restore(state);
}

bool RankLayout::holds_loss() const {
  return chunks_.back().model->stage().has_head && mesh_.coord(comm::kTp) == 0;
}

std::string RankLayout::describe() const {
  const comm::MeshShape& s = mesh_.shape();
  const BatchSplit& b = batch_;
  std::string text = fmt::format(
      "layout dp {} x tp {} x pp {} (world {}), zero {}; global batch {} x {} tokens, {} "
      "sequences per dp rank in {} micro-batch(es) of {}",
      s.size(comm::kDp), s.size(comm::kTp), s.size(comm::kPp), s.world(), options_.zero, b.global_batch, b.seq_len, b.rank_rows,
      b.micro_batches, b.micro_rows);
  if (const int ep = s.size(comm::kEp); ep > 1) {
    text += fmt::format("; expert parallel ep {} (of dp; {} of {} experts per rank)", ep,
                        config_.n_experts / ep, config_.n_experts);
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
  if (options_.grad_reduce_dtype == GradReduceDType::kBf16) text += "; gradient sums in bf16";
  if (options_.grad_dtype != GradDType::kFp32) {
    text += fmt::format("; gradients at rest in {}", grad_dtype_names()[static_cast<std::size_t>(options_.grad_dtype)]);
  }
  if (options_.offload.optimizer() && !chunks_.empty()) {
    const bool master = chunks_.front().dp && chunks_.front().dp->master() && chunks_.front().dp->master()->offloaded();
    text += std::string(options_.offload.params() ? "; AdamW moments and ZeRO-3 parameter shard "
                        : master                  ? "; AdamW moments and the fp32 master shard "
                                                  : "; AdamW moments ") +
            chunks_.front().adamw->moments().describe();
    // ZeRO 0 updates the whole model in place: its fp32 values have no sharded master to offload.
    if (options_.zero == 0 && options_.precision != kernels::Precision::kFp32 && !config_.lora.enabled()) {
      text += " (at --zero 0 the fp32 values stay in memory; --zero 1, also at one rank, puts the fp32 master "
              "on disk too)";
    }
  }
  if (!partition_text_.empty()) text += "\n" + partition_text_;
  return text;
}

void RankLayout::begin_weight_copies() {
  if (options_.precision == kernels::Precision::kFp32) return;
  const nn::WeightRounding r{options_.stochastic_rounding, rounding_seed_,
                             static_cast<uint64_t>(chunks_.front().adamw->step_count()), options_.precision};
  for (ModelChunk& c : chunks_) {
    if (c.dp && c.dp->master()) {  // ZeRO-1/2's persistent copy, remade after a change
      c.dp->refresh_weight_copy(c.model->matmul(), r);
      continue;
    }
    if (options_.precision != kernels::Precision::kBf16) continue;  // fp16 rounds per product
    c.model->begin_weight_copy(r);
    if (c.dp && c.dp->values_sharded()) c.dp->begin_weight_copies(c.model->matmul(), r);
  }
}

void RankLayout::end_weight_copies() {
  for (ModelChunk& c : chunks_) {
    c.model->end_weight_copy();
    if (c.dp) c.dp->end_weight_copies();
  }
}

}  // namespace trident::parallel
