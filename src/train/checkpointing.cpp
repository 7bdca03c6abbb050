// Checkpoint save/restore for the engine (see checkpointing.h).
#include "train/checkpointing.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <filesystem>
#include <cmath>
#include <functional>
#include <vector>

#include "ckpt/checkpoint.h"
#include "core/check.h"
#include "nn/lora.h"
#include "nn/lora_checkpoint.h"
#include "nn/moe_router.h"

namespace trident::train {

namespace {

// One logical tensor to gather: a parameter or one of its two AdamW moments.
struct GatherStep {
  ckpt::TensorSpec spec_value;
  int kind;  // -1: the parameter, 0: exp_avg, 1: exp_avg_sq
  bool adapter = false;  // a LoRA adapter: adapter_model.safetensors, under PEFT's name
  const ckpt::TensorSpec* spec = &spec_value;
  GatherStep(ckpt::TensorSpec s, int k, bool a) : spec_value(std::move(s)), kind(k), adapter(a) {}
  GatherStep(const GatherStep& o) : spec_value(o.spec_value), kind(o.kind), adapter(o.adapter) {}
  GatherStep& operator=(const GatherStep&) = delete;
};

void gather(parallel::Engine& engine, const GatherStep& step, float* out) {
  if (step.kind < 0) {
    engine.gather_param(step.spec->name, step.spec->shape, out);
  } else {
    engine.gather_optimizer_state(step.spec->name, step.spec->shape, step.kind, out);
  }
}

// The order rank 0's writer pulls the tensors in: model.safetensors (the parameters), a LoRA
// run's adapter_model.safetensors, then optimizer.safetensors (each trained parameter's
// exp_avg and exp_avg_sq: a LoRA run's frozen base has none). Every gather is collective, so
// all ranks run them in this order.
std::vector<GatherStep> gather_plan(const nn::ModelConfig& cfg) {
  std::vector<GatherStep> plan;
  // QLoRA: the frozen base stays the quantized checkpoint's (files copied by the writer).
  if (!cfg.packed_base()) {
    for (const auto& spec : nn::model_tensor_specs(cfg)) plan.emplace_back(spec, -1, false);
  }
  for (const auto& spec : nn::lora_tensor_specs(cfg)) plan.emplace_back(spec, -1, true);
  for (const auto& spec : nn::trained_tensor_specs(cfg)) {
    plan.emplace_back(spec, 0, false);
    plan.emplace_back(spec, 1, false);
  }
  return plan;
}

std::string tensor_name(const GatherStep& s) {
  return s.kind < 0 ? s.spec->name : s.kind == 0 ? ckpt::exp_avg_name(s.spec->name) : ckpt::exp_avg_sq_name(s.spec->name);
}

// Rank 0: writes and commits the checkpoint whose plan[i] tensor `emit(i, sink)` supplies
// (pulled in plan order, one at a time).
// `router_bias`: the model's (MoE layers, E) aux-free bias (nn/moe_router.h; empty when off), which
// every rank holds whole, so rank 0 writes its own copy: one F32 [E] tensor per layer.
std::string write_plan(const std::string& root, int64_t step, const nn::ModelConfig& cfg,
                       const std::vector<GatherStep>& plan, int64_t optimizer_step,
                       const nlohmann::json& trident_state, const std::vector<float>& router_bias,
                       const std::function<void(std::size_t, ckpt::TensorSink&)>& emit) {
  ckpt::CheckpointWriter writer(root, step, cfg);
  for (std::size_t i = 0; i < plan.size(); ++i) {
    ckpt::SafetensorsWriter& file = plan[i].adapter ? writer.adapters() : plan[i].kind < 0 ? writer.model() : writer.optimizer();
    file.add_tensor(plan[i].adapter ? nn::peft_tensor_name(cfg, plan[i].spec->name) : tensor_name(plan[i]),
                    plan[i].spec->shape, [&emit, i](ckpt::TensorSink& sink) { emit(i, sink); });
  }
  const std::vector<nn::TensorSpec> bias = nn::router_bias_specs(cfg);
  TRI_CHECK(router_bias.size() == bias.size() * static_cast<std::size_t>(cfg.n_experts),
            "checkpoint step {}: a router bias of {} floats for {} layers of {} experts", step, router_bias.size(),
            bias.size(), cfg.n_experts);
  for (std::size_t l = 0; l < bias.size(); ++l) {
    writer.model().add_tensor(bias[l].name, bias[l].shape, router_bias.data() + l * static_cast<std::size_t>(cfg.n_experts));
  }
  if (cfg.packed_base()) writer.set_packed_base(trident_state.value("lora_base", std::string()));
  if (cfg.lora.enabled()) {
    writer.set_adapter_config(nn::lora_adapter_config(cfg, trident_state.value("lora_base", std::string())));
  }
  writer.set_optimizer_step(optimizer_step);
  writer.set_trident_json(trident_state);
  return writer.commit();
}

// Never write NaN/inf: a poisoned checkpoint would load fine and poison every run resumed
// from it. Every rank scans its own shards; all agree, so all refuse together.
void refuse_nonfinite(parallel::Engine& engine, const std::string& root, int64_t step) {
  const std::string poisoned = engine.find_nonfinite_state();
  TRI_CHECK(poisoned.empty(),
            "not writing the checkpoint of step {} under {}: {} is not finite, so the weights or "
            "the optimizer state are poisoned; nothing was written and the checkpoints already "
            "there (and 'latest') are untouched. Lower --lr (or check the data) and start again or "
            "resume from the last good checkpoint",
            step, root, poisoned);
}

// A LoRA run's adapters from LOADED/adapter_model.safetensors (PEFT's names).
void load_adapters(parallel::Engine& engine, const ckpt::LoadedCheckpoint& loaded) {
  const std::string path = loaded.path + "/" + ckpt::kAdapterFile;
  TRI_CHECK(std::filesystem::is_regular_file(path),
            "{} has no {}: it is not a LoRA run's checkpoint, so there are no adapters to resume; start one "
            "with --init-from {} --lora-rank ...", loaded.path, ckpt::kAdapterFile, loaded.path);
  const ckpt::SafetensorsReader reader(path);
  const nn::ModelConfig& cfg = engine.config();
  for (const auto& spec : nn::lora_tensor_specs(cfg)) {
    const std::string name = nn::peft_tensor_name(cfg, spec.name);
    TRI_CHECK(reader.contains(name), "{} has no {}: its adapters are not this run's (--lora-rank {}, --lora-targets {})",
              path, name, cfg.lora.rank, fmt::format("{}", fmt::join(cfg.lora.targets, ",")));
    std::vector<float> logical(static_cast<std::size_t>(shape_numel(spec.shape)));
    reader.read(name, spec.shape, logical.data());
    ckpt::check_finite(logical.data(), shape_numel(spec.shape), name, path);
    engine.load_param(spec.name, logical.data());
  }
}

// The aux-free router bias (nn/moe_router.h) into every chunk (each holds the whole table):
// the checkpoint's where it has one, zeros where it has none (written without the bias).
void load_router_bias(parallel::Engine& engine, const ckpt::LoadedCheckpoint& loaded) {
  const nn::ModelConfig& cfg = engine.config();
  const std::vector<nn::TensorSpec> specs = nn::router_bias_specs(cfg);
  if (specs.empty()) {
    const std::string name = loaded.model_prefix + nn::router_bias_name(cfg.first_k_dense);
    TRI_CHECK(!cfg.is_moe() || !loaded.model.contains(name),
              "{} holds the aux-free balancing bias ({}, ...) but this run has --moe-bias-update-rate 0, which "
              "would route without it (other experts than the checkpoint's); give the rate the checkpoint was "
              "trained with (its config.json's router_bias_update_rate) or a new one", loaded.path, name);
    return;
  }
  std::vector<float> table(specs.size() * static_cast<std::size_t>(cfg.n_experts), 0.0f);
  for (std::size_t l = 0; l < specs.size(); ++l) {
    const std::string name = loaded.model_prefix + specs[l].name;
    if (!loaded.model.contains(name)) continue;  // zeros
    float* row = table.data() + l * static_cast<std::size_t>(cfg.n_experts);
    loaded.read_param(specs[l].name, specs[l].shape, row);
    ckpt::check_finite(row, cfg.n_experts, name, loaded.model.file_of(name));
  }
  for (int c = 0; c < engine.num_chunks(); ++c) engine.chunk_model(c).set_router_bias(table);
}

}  // namespace

std::string save_checkpoint(parallel::Engine& engine, const std::string& root, int64_t step,
                            const nlohmann::json& trident_state) {
  refuse_nonfinite(engine, root, step);
  const nn::ModelConfig& cfg = engine.config();
  const bool writer_rank = engine.mesh().rank() == 0;
  const std::vector<GatherStep> plan = gather_plan(cfg);
  std::size_t done = 0;  // steps of `plan` gathered so far
  std::string error;
  if (writer_rank) {
    // Each tensor is gathered when the writer reaches it and streamed out of one reused
    // buffer, so rank 0 never holds more than the largest logical tensor (the tied embedding) at once.
    int64_t largest = 0;
    for (const GatherStep& s : plan) largest = std::max(largest, shape_numel(s.spec->shape));
    std::vector<float> buffer(static_cast<std::size_t>(largest));
    try {
      write_plan(root, step, cfg, plan, engine.optimizer_step(), trident_state, engine.model().router_bias(),
                 [&](std::size_t index, ckpt::TensorSink& sink) {
                   TRI_CHECK(index == done, "checkpoint writer pulled tensor {} of {} out of order ({} expected)",
                             index, plan.size(), done);
                   gather(engine, plan[index], buffer.data());
                   ++done;
                   sink.write(buffer.data(), shape_numel(plan[index].spec->shape));
                 });
    } catch (const std::exception& e) {
      error = e.what();
    }
    // A failed write stops pulling tensors; the other ranks still wait in those gathers.
    for (; done < plan.size(); ++done) gather(engine, plan[done], buffer.data());
  } else {
    for (const GatherStep& s : plan) gather(engine, s, nullptr);
  }
  // Every rank learns whether the write worked, and its error, so all of them stop together.
  comm::throw_if_root_failed(engine.mesh().world(), error);
  return root + "/" + ckpt::step_dir_name(step);
}

int64_t snapshot_floats(const nn::ModelConfig& c) {
  const int64_t adapters = c.lora.enabled() ? nn::lora_parameter_count(c) : 0;
  const int64_t values = (c.packed_base() ? 0 : c.num_parameters()) + adapters;
  return values + 2 * (c.lora.enabled() ? adapters : c.num_parameters());
}

void take_snapshot(parallel::Engine& engine, const std::string& root, int64_t step,
                   const nlohmann::json& trident_state, CheckpointSnapshot& snapshot) {
  refuse_nonfinite(engine, root, step);
  const nn::ModelConfig& cfg = engine.config();
  const std::vector<GatherStep> plan = gather_plan(cfg);
  const bool writer_rank = engine.mesh().rank() == 0;
  if (writer_rank && snapshot.values.empty()) {
    std::size_t total = 0;
    for (const GatherStep& s : plan) total += static_cast<std::size_t>(shape_numel(s.spec->shape));
    TRI_CHECK(static_cast<int64_t>(total) == snapshot_floats(cfg), "checkpoint snapshot: the gather plan holds {} "
              "floats but snapshot_floats counts {} (the memory check would misprice --async-ckpt)", total,
              snapshot_floats(cfg));
    snapshot.values = FloatBuffer(engine.tracker(), MemCategory::kCheckpointSnapshot, total);
  }
  std::size_t offset = 0;
  for (const GatherStep& s : plan) {
    gather(engine, s, writer_rank ? snapshot.values.data() + offset : nullptr);
    offset += static_cast<std::size_t>(shape_numel(s.spec->shape));
  }
  if (writer_rank) snapshot.router_bias = engine.model().router_bias();
  snapshot.config = cfg;
  snapshot.step = step;
  snapshot.optimizer_step = engine.optimizer_step();
  snapshot.trident_state = trident_state;
}

std::string write_snapshot(const CheckpointSnapshot& snapshot, const std::string& root) {
  const std::vector<GatherStep> plan = gather_plan(snapshot.config);
  std::vector<std::size_t> offsets;
  std::size_t offset = 0;
  for (const GatherStep& s : plan) {
    offsets.push_back(offset);
    offset += static_cast<std::size_t>(shape_numel(s.spec->shape));
  }
  TRI_CHECK(offset == snapshot.values.size(), "the checkpoint snapshot of step {} holds {} values but "
            "the model has {}", snapshot.step, snapshot.values.size(), offset);
  // The engine's state was checked at the step boundary; checking the copy too means a
  // snapshot that went wrong can never become a checkpoint.
  for (std::size_t i = 0; i < plan.size(); ++i) {
    const float* v = snapshot.values.data() + offsets[i];
    const int64_t n = shape_numel(plan[i].spec->shape);
    for (int64_t j = 0; j < n; ++j) {
      TRI_CHECK(std::isfinite(v[j]), "not writing the checkpoint of step {} under {}: its snapshot "
                "holds a non-finite value in {} (element {}); nothing was written and the "
                "checkpoints already there (and 'latest') are untouched",
                snapshot.step, root, tensor_name(plan[i]), j);
    }
  }
  for (std::size_t i = 0; i < snapshot.router_bias.size(); ++i) {
    TRI_CHECK(std::isfinite(snapshot.router_bias[i]), "not writing the checkpoint of step {} under {}: its snapshot's "
              "router bias holds a non-finite value (element {})", snapshot.step, root, i);
  }
  return write_plan(root, snapshot.step, snapshot.config, plan, snapshot.optimizer_step,
                    snapshot.trident_state, snapshot.router_bias, [&](std::size_t index, ckpt::TensorSink& sink) {
                      sink.write(snapshot.values.data() + offsets[index], shape_numel(plan[index].spec->shape));
                    });
}

int64_t load_into_engine(parallel::Engine& engine, const ckpt::LoadedCheckpoint& loaded,
                         bool with_optimizer) {
  ckpt::check_same_model_shape(loaded.config, engine.config(), loaded.path);
  // Each rank reads only the elements it keeps (its slices: layout_state.h), a piece at a time,
  // straight from the files (pread: nothing of them stays resident), each piece checked finite.
  // A rank that finds a non-finite value throws (main aborts the job, so no rank waits for it).
  // QLoRA: the base came packed (load_packed_base), not as fp32 tensors.
  for (const auto& spec : nn::model_tensor_specs(engine.config())) {
    if (engine.config().packed_base()) break;
    const std::string name = loaded.model_prefix + spec.name;
    const std::string& file = loaded.model.file_of(name);
    engine.load_param_from(spec.name, [&](int64_t begin, int64_t count, float* dst) {
      loaded.model.read_range(name, spec.shape, begin, count, dst);
      ckpt::check_finite(dst, count, begin, name, file);
    });
  }
  load_router_bias(engine, loaded);
  // A resumed LoRA run continues its adapters; --init-from starts fresh ones on the base.
  if (with_optimizer && engine.config().lora.enabled()) load_adapters(engine, loaded);
  if (with_optimizer) {
    TRI_CHECK(loaded.optimizer.has_value(),
              "checkpoint {} has no optimizer.safetensors, so it cannot be resumed exactly; use "
              "--init-from to start a new run from its weights",
              loaded.path);
    ckpt::validate_optimizer_tensors(*loaded.optimizer, engine.config());
    for (const auto& spec : nn::trained_tensor_specs(engine.config())) {
      for (int kind = 0; kind < 2; ++kind) {
        const std::string name = kind == 0 ? ckpt::exp_avg_name(spec.name) : ckpt::exp_avg_sq_name(spec.name);
        engine.load_optimizer_state_from(spec.name, kind, [&](int64_t begin, int64_t count, float* dst) {
          loaded.optimizer->read_range(name, spec.shape, begin, count, dst);
          ckpt::check_finite(dst, count, begin, name, loaded.optimizer->path());
        });
      }
    }
    const auto opt_step = loaded.optimizer_step();
    TRI_CHECK(opt_step.has_value(), "optimizer.safetensors in {} has no 'step' metadata", loaded.path);
    engine.set_optimizer_step(*opt_step);
  }
  return loaded.step < 0 ? 0 : loaded.step;
}

}  // namespace trident::train
