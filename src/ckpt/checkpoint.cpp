// Checkpoint directories: names, config.json, atomic commit, latest resolution and opening.
// Tensor validation is in checkpoint_validate.cpp, `ckpt verify` and `ckpt info` in
// checkpoint_inspect.cpp.
#include "ckpt/checkpoint.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>

#include "ckpt/atomic_file.h"
#include "ckpt/checkpoint_detail.h"
#include "ckpt/checksums.h"
#include "core/check.h"
#include "core/crc32c.h"
#include "nn/lora_checkpoint.h"
#include "nn/moe_router.h"

namespace fs = std::filesystem;

namespace trident::ckpt::detail {

std::string join_path(const std::string& a, const std::string& b) { return (fs::path(a) / b).string(); }

bool is_file(const std::string& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

// step_NNNNNNNN -> N, or -1 when the name is not a step directory name.
std::int64_t parse_step_name(const std::string& name) {
  static const std::regex re("^step_([0-9]{1,18})$");
  std::smatch m;
  if (!std::regex_match(name, m, re)) return -1;
  return std::stoll(m[1].str());
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TRI_CHECK(in.good(), "cannot read '{}'", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

nlohmann::json read_json_file(const std::string& path) {
  const std::string text = read_text_file(path);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    TRI_FAIL("'{}' is not valid JSON: {}", path, e.what());
  }
}

}  // namespace trident::ckpt::detail

namespace trident::ckpt {

using namespace detail;  // this file defines them

namespace {

// Every step_* directory under root with a note on whether it is complete.
std::string describe_step_dirs(const std::string& root) {
  std::vector<std::pair<std::int64_t, std::string>> found;
  std::vector<std::string> staging;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_directory()) continue;
    const std::int64_t step = parse_step_name(name);
    if (step >= 0) {
      const bool complete = is_file(join_path(entry.path().string(), kModelFile)) &&
                            is_file(join_path(entry.path().string(), kConfigFile));
      found.emplace_back(step, complete ? name : name + " (incomplete)");
    } else if (name.size() > 5 && name.starts_with(".step_") && name.ends_with(".tmp")) {
      staging.push_back(name);
    }
  }
  std::sort(found.begin(), found.end());
  std::string out;
  if (found.empty()) {
    out = "no step directories exist there";
  } else {
    std::vector<std::string> names;
    for (const auto& f : found) names.push_back(f.second);
    out = fmt::format("step directories present: {}", fmt::join(names, ", "));
  }
  if (!staging.empty()) {
    out += fmt::format(" (plus interrupted saves: {})", fmt::join(staging, ", "));
  }
  return out;
}

}  // namespace

namespace detail {

std::string list_limited(const std::vector<std::string>& items, std::size_t max) {
  std::vector<std::string> shown(items.begin(), items.begin() + std::min(items.size(), max));
  std::string s = fmt::format("{}", fmt::join(shown, ", "));
  if (items.size() > max) s += fmt::format(" and {} more", items.size() - max);
  return s;
}

// "; 2 missing: [a, b]; 1 with the wrong shape: [c]" for the non-empty lists.
std::string problem_list(const std::vector<std::string>& missing, const std::vector<std::string>& wrong,
                         const std::vector<std::string>& extra) {
  std::string s;
  if (!missing.empty()) s += fmt::format("; {} missing: [{}]", missing.size(), list_limited(missing));
  if (!wrong.empty()) s += fmt::format("; {} mismatched: [{}]", wrong.size(), list_limited(wrong));
  if (!extra.empty()) s += fmt::format("; {} unexpected: [{}]", extra.size(), list_limited(extra));
  return s;
}

bool ignorable_hf_tensor(const nn::ModelConfig& config, const std::string& name, const std::string& prefix) {
  const nn::Architecture& arch = nn::architecture(config.family);
  // Buffers under the model class's prefix, or beside it (GPT2LMHeadModel's lm_head.weight).
  return (name.starts_with(prefix) && arch.ignorable_tensor(config, name.substr(prefix.size()))) ||
         arch.ignorable_tensor(config, name);
}

}  // namespace detail

namespace {

std::string detect_prefix(const SafetensorsSet& reader, const nn::ModelConfig& config) {
  const nn::Architecture& arch = nn::architecture(config.family);
  const std::string prefix(arch.hf_alternative_prefix());
  const std::string first = arch.embedding_params(config).front().name;
  if (!prefix.empty() && !reader.contains(first) && reader.contains(prefix + first)) return prefix;
  return "";
}

}  // namespace

std::string step_dir_name(std::int64_t step) {
  TRI_CHECK(step >= 0, "checkpoint step must be non-negative, got {}", step);
  return fmt::format("step_{:08d}", step);
}

std::int64_t step_from_dir_name(const std::string& name) { return parse_step_name(name); }

std::int64_t latest_step(const std::string& root) {
  const std::string latest = join_path(root, kLatestFile);
  if (!is_file(latest)) return -1;
  std::string name = read_text_file(latest);
  while (!name.empty() && std::isspace(static_cast<unsigned char>(name.back()))) name.pop_back();
  return parse_step_name(name);
}

std::string exp_avg_name(const std::string& param) { return param + ".exp_avg"; }
std::string exp_avg_sq_name(const std::string& param) { return param + ".exp_avg_sq"; }

// ---------------------------------------------------------------------------------------------
// config.json

nn::ModelConfig read_model_config(const std::string& path) {
  TRI_CHECK(is_file(path), "model config '{}' does not exist", path);
  const nlohmann::json j = read_json_file(path);
  // `trident quantize` writes this key (quant/quantized_model.h); only generate/eval read such a
  // checkpoint, and training from it would silently train on rounded weights.
  TRI_CHECK(!j.is_object() || !j.contains("quantization_config"),
            "{} belongs to a quantized checkpoint ({}): `trident generate`, `trident eval` and `trident "
            "ckpt info` read it, and `train` only as a frozen QLoRA base (--init-from DIR --lora-rank r "
            "--lora-targets ...); full training needs the fp32 checkpoint it was quantized from", path,
            j["quantization_config"].dump());
  return nn::model_config_from_hf_json(j, path);
}

void check_same_model_shape(const nn::ModelConfig& ck, const nn::ModelConfig& model,
                            const std::string& checkpoint_path) {
  std::vector<std::string> diffs;
  auto cmp = [&](const char* key, auto a, auto b) {
    if (a != b) diffs.push_back(fmt::format("{} {} but the model has {}", key, a, b));
  };
  cmp("model_type", nn::family_name(ck.family), nn::family_name(model.family));
  cmp("n_layer", ck.n_layer, model.n_layer);
  cmp("n_head", ck.n_head, model.n_head);
  cmp("n_embd", ck.n_embd, model.n_embd);
  cmp("n_positions", ck.n_positions, model.n_positions);
  cmp("vocab_size", ck.vocab_size, model.vocab_size);
  if (ck.family == model.family && ck.family != nn::Family::kGpt2) {  // GPT-2 derives these
    cmp("n_kv_head", ck.kv_heads(), model.kv_heads());
    cmp("n_inner", ck.mlp_width(), model.mlp_width());
    cmp("tie_word_embeddings", ck.tie_word_embeddings, model.tie_word_embeddings);
    cmp("norm_eps", ck.norm_eps, model.norm_eps);
    cmp("rope_theta", ck.rope_theta, model.rope_theta);
  }
  if (ck.family == model.family && ck.family == nn::Family::kMixtral) {  // which layers hold what
    cmp("first_k_dense_replace", ck.first_k_dense, model.first_k_dense);
    cmp("n_shared_experts", ck.n_shared_experts, model.n_shared_experts);
    cmp("moe_intermediate_size", ck.expert_width(), model.expert_width());
    // Not shapes, but the same weights route otherwise under another rule.
    cmp("scoring_func", nn::scoring_name(ck.scoring), nn::scoring_name(model.scoring));
    cmp("n_group", ck.n_group, model.n_group);
    cmp("topk_group", ck.topk_group, model.topk_group);
    cmp("routed_scaling_factor", ck.routed_scaling_factor, model.routed_scaling_factor);
  }
  TRI_CHECK(diffs.empty(),
            "checkpoint {} has {}; load it into the same model shape (its config.json gives the "
            "shape: drop --model, or pick a matching preset)",
            checkpoint_path, fmt::join(diffs, ", "));
}

// ---------------------------------------------------------------------------------------------
// Writing

CheckpointWriter::CheckpointWriter(std::string root, std::int64_t step, const nn::ModelConfig& config)
    : root_(std::move(root)), step_(step), config_(config) {
  (void)step_dir_name(step);  // validates step
  config_.validate();
  model_.set_metadata("format", "pt");  // Hugging Face's loader checks this
}

void CheckpointWriter::set_optimizer_step(std::int64_t optimizer_step) { optimizer_step_ = optimizer_step; }

std::string CheckpointWriter::commit() {
  const std::string name = step_dir_name(step_);
  std::string previous = "nothing";
  if (is_file(join_path(root_, kLatestFile))) {
    std::string s = read_text_file(join_path(root_, kLatestFile));
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
    previous = s;
  }
  const std::int64_t latest = parse_step_name(previous);
  TRI_CHECK(latest <= step_,
            "not saving checkpoint {} in '{}': {} names {}, a later step, and it never moves "
            "backwards; continue from that one (--resume {}) or save to another --ckpt-dir",
            name, root_, kLatestFile, previous, root_);
  // The model tensors must be exactly the logical GPT-2 set, so every checkpoint loads.
  {
    std::map<std::string, Shape> have;
    for (auto& [n, s] : model_.layout()) have[n] = s;
    std::vector<std::string> missing, wrong;
    std::vector<nn::TensorSpec> specs = nn::model_tensor_specs(config_);
    for (nn::TensorSpec& b : nn::router_bias_specs(config_)) specs.push_back(std::move(b));  // state, F32
    for (const auto& spec : specs) {
      if (!packed_base_.empty()) break;  // the base's files are copied, not written
      auto it = have.find(spec.name);
      if (it == have.end()) {
        missing.push_back(spec.name);
        continue;
      }
      if (it->second != spec.shape) {
        wrong.push_back(fmt::format("{} {} (expected {})", spec.name, shape_str(it->second),
                                    shape_str(spec.shape)));
      }
      have.erase(it);
    }
    std::vector<std::string> extra;
    for (const auto& [n, s] : have) extra.push_back(n);
    TRI_CHECK(missing.empty() && wrong.empty() && extra.empty(),
              "checkpoint step {} for {}: the model tensors handed to the writer do not match "
              "the config ({}){}",
              step_, root_, config_.describe(), problem_list(missing, wrong, extra));
    std::map<std::string, Shape> adapters;
    for (auto& [n, s] : adapters_.layout()) adapters[n] = s;
    std::map<std::string, Shape> expected;
    for (const auto& spec : nn::lora_tensor_specs(config_)) expected[nn::peft_tensor_name(config_, spec.name)] = spec.shape;
    TRI_CHECK(adapters == expected, "checkpoint step {} for {}: the adapters handed to the writer ({}) are not the "
              "config's LoRA adapters ({})", step_, root_, adapters.size(), expected.size());
  }
  std::string final_path;
  try {
    StagedDirectory staged(root_, name);
    nlohmann::json checksums = nlohmann::json::object();  // ckpt/checksums.h
    if (packed_base_.empty()) {
      checksums[kModelFile] = crc32c_string(model_.write(join_path(staged.path(), kModelFile)));
      write_file_atomic(join_path(staged.path(), kConfigFile), nn::model_config_to_hf_json(config_).dump(2) + "\n");
    } else {
      for (const char* f : {kModelFile, kConfigFile}) {
        TRI_CHECK(is_file(join_path(packed_base_, f)), "the QLoRA base {} has no {} any more", packed_base_, f);
        fs::copy_file(join_path(packed_base_, f), join_path(staged.path(), f));
      }
      checksums[kModelFile] = crc32c_string(file_crc32c(join_path(staged.path(), kModelFile)));
    }
    if (config_.lora.enabled()) {
      checksums[kAdapterFile] = crc32c_string(adapters_.write(join_path(staged.path(), kAdapterFile)));
      write_file_atomic(join_path(staged.path(), kAdapterConfigFile), adapter_config_.dump(2) + "\n");
    }
    if (optimizer_.size() > 0 || optimizer_step_) {
      SafetensorsWriter opt = optimizer_;
      opt.set_metadata("step", std::to_string(optimizer_step_.value_or(step_)));
      opt.set_metadata("format", "trident-adamw");
      checksums[kOptimizerFile] = crc32c_string(opt.write(join_path(staged.path(), kOptimizerFile)));
    }
    nlohmann::json state = trident_.is_object() ? trident_ : nlohmann::json{{"state", trident_}};
    state["step"] = step_;
    state[kChecksumsKey] = std::move(checksums);
    write_file_atomic(join_path(staged.path(), kTridentFile), state.dump(2) + "\n");
    staged.commit();
    final_path = staged.final_path();
  } catch (const std::exception& e) {
    TRI_FAIL("saving checkpoint {} in '{}' failed, nothing was committed ({} still names {}): {}",
             name, root_, kLatestFile, previous, e.what());
  }
  try {
    write_file_atomic(join_path(root_, kLatestFile), name + "\n");
  } catch (const std::exception& e) {
    TRI_FAIL("checkpoint {} was written to '{}' but updating '{}' failed ({} still names {}): {}",
             name, final_path, join_path(root_, kLatestFile), kLatestFile, previous, e.what());
  }
  return final_path;
}

// ---------------------------------------------------------------------------------------------
// Reading

std::vector<std::string> list_step_dirs(const std::string& root) {
  std::vector<std::pair<std::int64_t, std::string>> found;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::int64_t step = parse_step_name(entry.path().filename().string());
    if (step < 0 || !entry.is_directory()) continue;
    if (is_file(join_path(entry.path().string(), kModelFile)) &&
        is_file(join_path(entry.path().string(), kConfigFile))) {
      found.emplace_back(step, entry.path().string());
    }
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> out;
  for (auto& f : found) out.push_back(std::move(f.second));
  return out;
}

std::string latest_checkpoint(const std::string& root) {
  std::error_code ec;
  TRI_CHECK(fs::exists(root, ec), "checkpoint directory '{}' does not exist", root);
  TRI_CHECK(fs::is_directory(root, ec), "checkpoint path '{}' is not a directory", root);
  const std::string latest = join_path(root, kLatestFile);
  TRI_CHECK(is_file(latest),
            "no checkpoint to load in '{}': it holds neither {} nor a '{}' file naming the newest "
            "step; {}. Pass a step directory itself to use one of them",
            root, kModelFile, kLatestFile, describe_step_dirs(root));
  std::string name = read_text_file(latest);
  while (!name.empty() && std::isspace(static_cast<unsigned char>(name.back()))) name.pop_back();
  TRI_CHECK(parse_step_name(name) >= 0,
            "'{}' holds \"{}\", not a step directory name like step_00000100; {}", latest, name,
            describe_step_dirs(root));
  const std::string dir = join_path(root, name);
  TRI_CHECK(fs::is_directory(dir, ec), "'{}' names {}, but '{}' does not exist; {}", latest, name,
            dir, describe_step_dirs(root));
  for (const char* f : {kModelFile, kConfigFile}) {
    TRI_CHECK(is_file(join_path(dir, f)), "'{}' names {}, but '{}' is incomplete (no {}); {}",
              latest, name, dir, f, describe_step_dirs(root));
  }
  return dir;
}

std::string resolve_checkpoint(const std::string& path) {
  std::error_code ec;
  TRI_CHECK(fs::exists(path, ec), "checkpoint path '{}' does not exist", path);
  if (is_file(join_path(path, kModelFile)) || is_file(join_path(path, kModelIndexFile))) return path;
  // DIR/latest itself (the file the help text names): the directory it belongs to.
  if (const fs::path p(path); is_file(path) && p.filename() == kLatestFile) {
    return latest_checkpoint(p.parent_path().empty() ? "." : p.parent_path().string());
  }
  return latest_checkpoint(path);
}

void LoadedCheckpoint::read_param(const std::string& name, const Shape& shape, float* dst) const {
  model.read(model_prefix + name, shape, dst);
}

std::optional<std::int64_t> LoadedCheckpoint::optimizer_step() const {
  if (!optimizer) return std::nullopt;
  const auto it = optimizer->metadata().find("step");
  if (it == optimizer->metadata().end()) return std::nullopt;
  try {
    return std::stoll(it->second);
  } catch (const std::exception&) {
    TRI_FAIL("optimizer state {} has a non-integer step \"{}\" in its metadata", optimizer->path(),
             it->second);
  }
}

LoadedCheckpoint detail::open_checkpoint(const std::string& path) {
  const std::string dir = resolve_checkpoint(path);
  const std::string config_path = join_path(dir, kConfigFile);
  TRI_CHECK(is_file(config_path),
            "'{}' has {} but no {}; Trident needs the Hugging Face config.json beside the "
            "weights to know the model family and shape",
            dir, is_file(join_path(dir, kModelFile)) ? kModelFile : kModelIndexFile, kConfigFile);
  nn::ModelConfig config = read_model_config(config_path);
  // A LoRA run's checkpoint: its adapters are part of the model it describes.
  if (const std::string adapter = join_path(dir, kAdapterConfigFile); is_file(adapter)) {
    config.lora = nn::lora_config_from_adapter_json(config, read_json_file(adapter), adapter);
    config.validate();
  }
  SafetensorsSet model(dir);
  LoadedCheckpoint ck{dir, config, std::move(model), std::nullopt, nullptr, -1, ""};
  ck.model_prefix = detect_prefix(ck.model, ck.config);
  if (is_file(join_path(dir, kOptimizerFile))) ck.optimizer.emplace(join_path(dir, kOptimizerFile));
  if (is_file(join_path(dir, kTridentFile))) {
    ck.trident = read_json_file(join_path(dir, kTridentFile));
    if (ck.trident.is_object() && ck.trident.contains("step") && ck.trident["step"].is_number_integer()) {
      ck.step = ck.trident["step"].get<std::int64_t>();
    }
  }
  return ck;
}

int LoadedCheckpoint::verify_checksums() const {
  std::vector<const SafetensorsReader*> readers;
  for (const SafetensorsReader& shard : model.shards()) readers.push_back(&shard);
  if (optimizer) readers.push_back(&*optimizer);
  return ckpt::verify_checksums(path, trident, readers);
}

void LoadedCheckpoint::load_then_verify(const std::function<void()>& load) const {
  try {
    load();
  } catch (const Error&) {
    verify_checksums();  // throws instead when a file is damaged
    throw;
  }
  verify_checksums();
}

LoadedCheckpoint load_checkpoint(const std::string& path, ChecksumCheck checksums) {
  LoadedCheckpoint ck = open_checkpoint(path);
  validate_model_tensors(ck.model, ck.config, ck.model_prefix);
  if (ck.optimizer) validate_optimizer_tensors(*ck.optimizer, ck.config);
  if (checksums == ChecksumCheck::kNow) {
    ckpt::verify_checksums(ck.path, ck.trident);  // last: a damaged file's own error names it better
  } else if (checksums == ChecksumCheck::kAfterReads) {
    ck.model.checksum_reads();
    if (ck.optimizer) ck.optimizer->checksum_reads();
  }
  return ck;
}

}  // namespace trident::ckpt
