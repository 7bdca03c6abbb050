// Checkpoint save/restore for the engine (see checkpointing.h).
#include "train/checkpointing.h"

#include <vector>

#include "ckpt/checkpoint.h"
#include "core/check.h"

namespace trident::train {

std::string save_checkpoint(parallel::Engine& engine, const std::string& root, int64_t step,
                            const nlohmann::json& trident_state) {
  const nn::GPTConfig& cfg = engine.config();
  const bool writer_rank = engine.mesh().rank() == 0;
  const auto specs = ckpt::gpt2_tensor_specs(cfg);
  // Gather every tensor to rank 0 first (collective, same order everywhere); rank 0 then
  // streams them out. Held once on rank 0 only: the logical model plus its two moments.
  std::vector<std::vector<float>> params, m, v;
  for (const auto& spec : specs) {
    const auto n = static_cast<std::size_t>(shape_numel(spec.shape));
    params.emplace_back(writer_rank ? n : 0);
    m.emplace_back(writer_rank ? n : 0);
    v.emplace_back(writer_rank ? n : 0);
    engine.gather_param(spec.name, spec.shape, writer_rank ? params.back().data() : nullptr);
    engine.gather_optimizer_state(spec.name, spec.shape, 0, writer_rank ? m.back().data() : nullptr);
    engine.gather_optimizer_state(spec.name, spec.shape, 1, writer_rank ? v.back().data() : nullptr);
  }
  std::string path;
  std::string error;
  if (writer_rank) {
    try {
      ckpt::CheckpointWriter writer(root, step, cfg);
      for (std::size_t i = 0; i < specs.size(); ++i) {
        writer.model().add_tensor(specs[i].name, specs[i].shape, params[i].data());
        writer.optimizer().add_tensor(ckpt::exp_avg_name(specs[i].name), specs[i].shape, m[i].data());
        writer.optimizer().add_tensor(ckpt::exp_avg_sq_name(specs[i].name), specs[i].shape, v[i].data());
      }
      writer.set_optimizer_step(engine.optimizer_step());
      writer.set_trident_json(trident_state);
      path = writer.commit();
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  // Every rank learns whether the write worked, so all of them stop together on failure.
  std::vector<int32_t> failed{error.empty() ? 0 : 1};
  engine.mesh().world().allreduce(std::span<int32_t>(failed), comm::ReduceOp::kMax).wait();
  if (failed[0]) {
    TRI_FAIL("{}", writer_rank ? error
                               : std::string("rank 0 failed to write the checkpoint (see its error); "
                                             "the previous checkpoint is intact"));
  }
  return root + "/" + ckpt::step_dir_name(step);
}

int64_t load_into_engine(parallel::Engine& engine, const ckpt::LoadedCheckpoint& loaded,
                         bool with_optimizer) {
  ckpt::check_same_model_shape(loaded.config, engine.config(), loaded.path);
  for (const auto& spec : ckpt::gpt2_tensor_specs(engine.config())) {
    std::vector<float> logical(static_cast<std::size_t>(shape_numel(spec.shape)));
    loaded.read_param(spec.name, spec.shape, logical.data());
    engine.load_param(spec.name, logical.data());
  }
  if (with_optimizer) {
    TRI_CHECK(loaded.optimizer.has_value(),
              "checkpoint {} has no optimizer.safetensors, so it cannot be resumed exactly; use "
              "--init-from to start a new run from its weights",
              loaded.path);
    ckpt::validate_optimizer_tensors(*loaded.optimizer, engine.config());
    for (const auto& spec : ckpt::gpt2_tensor_specs(engine.config())) {
      std::vector<float> logical(static_cast<std::size_t>(shape_numel(spec.shape)));
      loaded.optimizer->read(ckpt::exp_avg_name(spec.name), spec.shape, logical.data());
      engine.load_optimizer_state(spec.name, 0, logical.data());
      loaded.optimizer->read(ckpt::exp_avg_sq_name(spec.name), spec.shape, logical.data());
      engine.load_optimizer_state(spec.name, 1, logical.data());
    }
    const auto opt_step = loaded.optimizer_step();
    TRI_CHECK(opt_step.has_value(), "optimizer.safetensors in {} has no 'step' metadata", loaded.path);
    engine.set_optimizer_step(*opt_step);
  }
  return loaded.step < 0 ? 0 : loaded.step;
}

}  // namespace trident::train
