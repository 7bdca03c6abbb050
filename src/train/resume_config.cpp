// Restoring a run's configuration from its checkpoint (see resume_config.h).
#include "train/resume_config.h"

#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "ckpt/checkpoint.h"
#include "core/check.h"
#include "quant/quantized_model.h"

namespace fs = std::filesystem;

namespace trident::train {

namespace {

using json = nlohmann::json;

std::string describe(const json& j) {
  if (j.is_string()) return fmt::format("the string '{}'", j.get<std::string>());
  if (j.is_number_integer()) return fmt::format("the integer {}", j.dump());
  if (j.is_number()) return fmt::format("the number {}", j.dump());
  if (j.is_null()) return "null";
  if (j.is_boolean()) return fmt::format("the boolean {}", j.dump());
  return j.is_array() ? "an array" : "an object";
}

json read_trident_json(const std::string& dir, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TRI_CHECK(in.good(),
            "checkpoint {} has no readable {}, so its run cannot be resumed (without it the step, "
            "data position and run configuration are unknown); --init-from starts a new run from "
            "its weights",
            dir, ckpt::kTridentFile);
  std::stringstream text;
  text << in.rdbuf();
  try {
    return json::parse(text.str());
  } catch (const json::exception& e) {
    TRI_FAIL("{} is not valid JSON ({}), so the run cannot be resumed from it; resume from "
             "another step directory of the run, or restore the file",
             path, e.what());
  }
}

// The step trident.json records, checked against the directory's name and the data position.
std::int64_t checked_step(const json& j, const std::string& dir, const std::string& path) {
  TRI_CHECK(j.is_object(), "{} must be a JSON object (with step, run_config, data, rng), got {}",
            path, describe(j));
  TRI_CHECK(j.contains("step"), "{} has no 'step', so the step to continue from is unknown", path);
  const json& step = j["step"];
  TRI_CHECK(step.is_number_integer() && step.get<std::int64_t>() >= 0,
            "'step' in {} must be a non-negative integer, got {}; the schedule and data order "
            "cannot continue from an unknown step",
            path, describe(step));
  const std::int64_t n = step.get<std::int64_t>();
  const std::int64_t named = ckpt::step_from_dir_name(fs::path(dir).filename().string());
  TRI_CHECK(named < 0 || named == n, "'step' in {} is {} but the directory is {}: one of them is "
                                     "wrong, so the run cannot be resumed from it",
            path, n, ckpt::step_dir_name(named));
  if (j.contains("data")) {
    const json& data = j["data"];
    TRI_CHECK(data.is_object() && data.contains("next_step") && data["next_step"].is_number_integer() &&
                  data["next_step"].get<std::int64_t>() == n,
              "'data.next_step' in {} must be the integer {} (the step), got {}", path, n,
              data.is_object() && data.contains("next_step") ? describe(data["next_step"]) : describe(data));
  }
  return n;
}

// Field names of [model] that fix the weights' shape (all but the padding of the embedding,
// which the layout-free checkpoint does not store).
FieldNames shape_fields() {
  FieldNames names;
  ModelOptions m;
  for_each_field(m, [&](const auto& f, auto&) {
    // Not the model's shape: padding, and the auxiliary losses' weights in the objective.
    if (f.name != "vocab_pad_multiple" && f.name != "moe_aux_loss_coef" && f.name != "moe_z_loss_coef" &&
        f.name != "moe_bias_update_rate" && f.name != "moe_capacity_factor") {
      names.insert(std::string(f.name));
    }
  });
  return names;
}

}  // namespace

ResumedConfig resume_run_config(const RunConfig& given, const FieldNames& given_fields, int world_size) {
  const std::string dir = ckpt::resolve_checkpoint(given.train.resume);
  const std::string path = (fs::path(dir) / ckpt::kTridentFile).string();
  const json j = read_trident_json(dir, path);
  const std::int64_t step = checked_step(j, dir, path);
  TRI_CHECK(j.contains("run_config"),
            "{} has no 'run_config', so the run's options are unknown; resume from a checkpoint "
            "written by `trident train`",
            path);
  const RunConfig saved = run_config_from_json(j["run_config"], fmt::format("{} 'run_config'", path));

  ResumedConfig out;
  RunConfig& cfg = out.config;
  cfg = saved;
  cfg.train.init_from.clear();
  cfg.train.stop_after = 0;
  FieldNames overrides = given_fields;
  overrides.erase("resume");
  const std::vector<FieldChange> changes = override_fields(cfg, given, overrides);
  cfg.train.resume = dir;

  // The saved adapters fix the LoRA settings, as the weights fix the shape (config.json, which
  // the shape check below reads, is the base's and says nothing of them).
  std::vector<std::string> lora_flags;
  for (const FieldChange& c : changes) {
    if (c.name.starts_with("lora_")) lora_flags.push_back(c.text);
  }
  TRI_CHECK(lora_flags.empty(),
            "{} cannot be honoured when resuming {}: a resumed run continues the adapters it saved, "
            "with their rank, alpha and targets; drop {} to continue them, or train new adapters in "
            "a new run with --init-from on the base model",
            fmt::join(lora_flags, ", "), dir, lora_flags.size() == 1 ? "that flag" : "those flags");

  // The weights fix the model: a change of its shape cannot be honoured.
  // A QLoRA run's directory is a quantized checkpoint (train/qlora.h): its base's shape alike.
  const nn::ModelConfig stored = quant::is_quantized_checkpoint(dir)
                                     ? quant::inference_config(dir)
                                     : ckpt::read_model_config((fs::path(dir) / ckpt::kConfigFile).string());
  const FieldNames shape = shape_fields();
  std::vector<std::string> shape_flags;
  for (const FieldChange& c : changes) {
    if (shape.contains(c.name)) shape_flags.push_back(c.text);
  }
  if (!shape_flags.empty()) {
    std::string problem;
    try {
      const nn::ModelConfig wanted = resolve_model_config(cfg.model);
      ckpt::check_same_model_shape(stored, wanted, dir);
    } catch (const Error& e) {
      problem = e.what();
    }
    TRI_CHECK(problem.empty(),
              "{} cannot be honoured when resuming {}: the weights fix the model ({}); drop "
              "{} (a resumed run keeps its model). [{}]",
              fmt::join(shape_flags, ", "), dir, stored.describe(),
              shape_flags.size() == 1 ? "that flag" : "those flags", problem);
  } else if (!fs::exists(cfg.model.model)) {
    // A config.json path that is gone (or relative to another directory): the checkpoint's
    // own config.json is the same model.
    const auto presets = nn::model_preset_names();
    if (std::find(presets.begin(), presets.end(), cfg.model.model) == presets.end()) {
      out.notes.push_back(fmt::format("resume: model config '{}' does not exist here; using the "
                                      "checkpoint's {}",
                                      cfg.model.model, ckpt::kConfigFile));
      cfg.model.model = dir;
    }
  }
  TRI_CHECK(cfg.data.seq_len <= stored.n_positions,
            "--seq-len {} cannot be honoured when resuming {}: the model's position table holds "
            "n_positions {} tokens; give --seq-len {} or less",
            cfg.data.seq_len, dir, stored.n_positions, stored.n_positions);
  const ParallelOptions& p = cfg.parallel;
  TRI_CHECK(p.world_size() == world_size,
            "resuming {}: the layout is dp {} x tp {} x pp {} ({} ranks; options not given are "
            "restored from the checkpoint) but this launch has {} rank{}: launch {} ranks, or give "
            "the new layout in full with --dp, --tp and --pp (checkpoints are layout-free)",
            dir, p.dp, p.tp, p.pp, p.world_size(), world_size, world_size == 1 ? "" : "s",
            p.world_size());
  try {
    validate_run_config(cfg);
  } catch (const Error& e) {
    TRI_FAIL("the options given with --resume do not fit the run saved in {}: {}", path, e.what());
  }

  out.notes.insert(out.notes.begin(),
                   fmt::format("resume: step {} of {}, with the run configuration from the checkpoint "
                               "({}): model {}, data {}, dp {} x tp {} x pp {}, ckpt_dir {}",
                               step, cfg.train.steps, path, cfg.model.model, cfg.data.data,
                               cfg.parallel.dp, cfg.parallel.tp, cfg.parallel.pp,
                               cfg.train.ckpt_dir.empty() ? "none" : cfg.train.ckpt_dir));
  for (const FieldChange& c : changes) out.notes.push_back("resume: " + c.text);
  return out;
}

}  // namespace trident::train
