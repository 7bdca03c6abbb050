// Checkpoint directories: names, config.json, atomic commit, latest resolution, validation and
// the `ckpt info` summary.
#include "ckpt/checkpoint.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "ckpt/atomic_file.h"
#include "core/check.h"
#include "nn/lora_checkpoint.h"
#include "nn/moe_router.h"

namespace fs = std::filesystem;

namespace trident::ckpt {
namespace {

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

std::string list_limited(const std::vector<std::string>& items, std::size_t max = 8) {
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

std::string format_bytes(std::uint64_t b) {
  if (b >= (1ull << 30)) return fmt::format("{:.2f} GiB", static_cast<double>(b) / (1ull << 30));
  if (b >= (1ull << 20)) return fmt::format("{:.1f} MiB", static_cast<double>(b) / (1ull << 20));
  if (b >= (1ull << 10)) return fmt::format("{:.1f} KiB", static_cast<double>(b) / (1ull << 10));
  return fmt::format("{} B", b);
}

bool ignorable_hf_tensor(const nn::ModelConfig& config, const std::string& name, const std::string& prefix) {
  const nn::Architecture& arch = nn::architecture(config.family);
  // Buffers under the model class's prefix, or beside it (GPT2LMHeadModel's lm_head.weight).
  return (name.starts_with(prefix) && arch.ignorable_tensor(config, name.substr(prefix.size()))) ||
         arch.ignorable_tensor(config, name);
}

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
    if (packed_base_.empty()) {
      model_.write(join_path(staged.path(), kModelFile));
      write_file_atomic(join_path(staged.path(), kConfigFile), nn::model_config_to_hf_json(config_).dump(2) + "\n");
    } else {
      for (const char* f : {kModelFile, kConfigFile}) {
        TRI_CHECK(is_file(join_path(packed_base_, f)), "the QLoRA base {} has no {} any more", packed_base_, f);
        fs::copy_file(join_path(packed_base_, f), join_path(staged.path(), f));
      }
    }
    if (config_.lora.enabled()) {
      adapters_.write(join_path(staged.path(), kAdapterFile));
      write_file_atomic(join_path(staged.path(), kAdapterConfigFile), adapter_config_.dump(2) + "\n");
    }
    if (optimizer_.size() > 0 || optimizer_step_) {
      SafetensorsWriter opt = optimizer_;
      opt.set_metadata("step", std::to_string(optimizer_step_.value_or(step_)));
      opt.set_metadata("format", "trident-adamw");
      opt.write(join_path(staged.path(), kOptimizerFile));
    }
    nlohmann::json state = trident_.is_object() ? trident_ : nlohmann::json{{"state", trident_}};
    state["step"] = step_;
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

namespace {
LoadedCheckpoint open_checkpoint(const std::string& path) {
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
}  // namespace

LoadedCheckpoint load_checkpoint(const std::string& path) {
  LoadedCheckpoint ck = open_checkpoint(path);
  validate_model_tensors(ck.model, ck.config, ck.model_prefix);
  if (ck.optimizer) validate_optimizer_tensors(*ck.optimizer, ck.config);
  return ck;
}

std::string model_source(const SafetensorsSet& set) {
  return set.sharded() ? set.index_path() : set.shards().front().path();
}

void validate_model_tensors(const SafetensorsSet& reader, const nn::ModelConfig& config,
                            const std::string& prefix) {
  // A config.json that names far more layers than the file holds (n_layer 1e9) must not make
  // us list 12 * n_layer expected names first: compare the counts up front (small mismatches
  // get the detailed report below).
  const std::int64_t expected_count = nn::model_tensor_count(config);
  TRI_CHECK(expected_count <= 2 * static_cast<std::int64_t>(reader.tensors().size()) + 1024,
            "model tensors in {} do not match the model ({}): config.json implies {} tensors for "
            "n_layer {} but the file holds {}; config.json does not belong to these weights",
            model_source(reader), config.describe(), expected_count, config.n_layer, reader.tensors().size());
  const nn::Architecture& arch = nn::architecture(config.family);
  std::vector<std::string> missing, wrong_shape, wrong_dtype, extra, inferred;
  std::set<std::string> expected;
  for (const auto& spec : nn::model_tensor_specs(config)) {
    const std::string name = prefix + spec.name;
    expected.insert(name);
    if (!reader.contains(name)) {
      missing.push_back(name);
      continue;
    }
    const auto& t = reader.info(name);
    if (t.shape != spec.shape) {
      wrong_shape.push_back(fmt::format("{} is {} (expected {})", name, shape_str(t.shape), shape_str(spec.shape)));
    }
    if (!dtype_readable_as_f32(t.dtype)) {
      wrong_dtype.push_back(fmt::format("{} is {}", name, dtype_name(t.dtype)));
    }
  }
  // The aux-free router bias (nn/moe_router.h) is state, not a parameter: optional (a checkpoint
  // written without it starts it at zero), but of the right shape when there.
  for (const auto& spec : nn::router_bias_specs(config)) {
    const std::string name = prefix + spec.name;
    expected.insert(name);
    if (!reader.contains(name)) continue;
    if (reader.info(name).shape != spec.shape) {
      wrong_shape.push_back(fmt::format("{} is {} (expected {})", name, shape_str(reader.info(name).shape), shape_str(spec.shape)));
    }
  }
  int max_layer = -1;
  for (const auto& t : reader.tensors()) {
    if (t.name.starts_with(prefix)) max_layer = std::max(max_layer, arch.layer_of(t.name.substr(prefix.size())));
    if (expected.count(t.name) == 0 && !ignorable_hf_tensor(config, t.name, prefix)) extra.push_back(t.name);
  }
  if (missing.empty() && wrong_shape.empty() && wrong_dtype.empty() && extra.empty()) return;

  // Say what shape the checkpoint's tensors imply, where they do.
  auto infer = [&](const char* key, std::int64_t ck, std::int64_t model) {
    if (ck != model) inferred.push_back(fmt::format("{} {} but the model has {}", key, ck, model));
  };
  for (const nn::ShapeWitness& w : arch.shape_witnesses(config)) {
    const std::string name = prefix + w.tensor;
    if (!reader.contains(name) || reader.info(name).shape.size() <= static_cast<std::size_t>(w.dim)) continue;
    infer(w.field.c_str(), reader.info(name).shape[static_cast<std::size_t>(w.dim)], w.value);
  }
  if (max_layer >= 0) infer("n_layer", max_layer + 1, config.n_layer);

  std::string msg = fmt::format("model tensors in {} do not match the model ({})", model_source(reader),
                                config.describe());
  if (!inferred.empty()) msg += fmt::format(": checkpoint has {}", fmt::join(inferred, ", "));
  if (!missing.empty()) msg += fmt::format("; {} missing: {}", missing.size(), list_limited(missing));
  if (!wrong_shape.empty()) msg += fmt::format("; {} with the wrong shape: {}", wrong_shape.size(), list_limited(wrong_shape));
  if (!wrong_dtype.empty()) msg += fmt::format("; {} with a dtype that is not a float: {}", wrong_dtype.size(), list_limited(wrong_dtype));
  if (!extra.empty()) msg += fmt::format("; {} unexpected: {}", extra.size(), list_limited(extra));
  TRI_FAIL("{}", msg);
}

void validate_optimizer_tensors(const SafetensorsReader& reader, const nn::ModelConfig& config) {
  // The count first, without listing the tensors (see validate_model_tensors).
  const std::int64_t expected_count = 2 * nn::trained_tensor_count(config);
  TRI_CHECK(expected_count <= 2 * static_cast<std::int64_t>(reader.tensors().size()) + 1024,
            "optimizer state in {} does not match the model ({}): it needs {} tensors (exp_avg and "
            "exp_avg_sq of each of n_layer {}'s parameters) but the file holds {}",
            reader.path(), config.describe(), expected_count, config.n_layer, reader.tensors().size());
  const std::vector<nn::TensorSpec> trained = nn::trained_tensor_specs(config);
  std::vector<std::string> missing, wrong;
  for (const auto& spec : trained) {
    for (const std::string& name : {exp_avg_name(spec.name), exp_avg_sq_name(spec.name)}) {
      if (!reader.contains(name)) {
        missing.push_back(name);
        continue;
      }
      const auto& t = reader.info(name);
      if (t.shape != spec.shape || t.dtype != DType::kF32) {
        wrong.push_back(fmt::format("{} is {} {} (expected F32 {})", name, dtype_name(t.dtype),
                                    shape_str(t.shape), shape_str(spec.shape)));
      }
    }
  }
  TRI_CHECK(missing.empty() && wrong.empty(), "optimizer state in {} does not match the model ({}){}",
            reader.path(), config.describe(), problem_list(missing, wrong, {}));
}

// ---------------------------------------------------------------------------------------------
// verify

void check_finite(const float* data, std::int64_t n, const std::string& tensor, const std::string& file) {
  std::int64_t first = -1, bad = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(data[i])) {
      if (first < 0) first = i;
      ++bad;
    }
  }
  TRI_CHECK(bad == 0,
            "tensor '{}' in {} holds {} at element {} ({} of {} elements are not finite): Trident "
            "never writes non-finite values, so this file is damaged or comes from a diverged run",
            tensor, file, data[first], first, bad, n);
}

std::string verify_checkpoint(const std::string& path) {
  LoadedCheckpoint ck = open_checkpoint(path);  // config.json parsed and validated
  validate_model_tensors(ck.model, ck.config, ck.model_prefix);
  const std::vector<TensorSpec> specs = nn::model_tensor_specs(ck.config);
  std::int64_t largest = 0;
  for (const auto& spec : specs) largest = std::max(largest, shape_numel(spec.shape));
  std::vector<float> buffer(static_cast<std::size_t>(largest));
  std::int64_t elements = 0;
  for (const auto& spec : specs) {
    ck.read_param(spec.name, spec.shape, buffer.data());
    check_finite(buffer.data(), shape_numel(spec.shape), ck.model_prefix + spec.name,
                 ck.model.file_of(ck.model_prefix + spec.name));
    elements += shape_numel(spec.shape);
  }
  std::string summary = fmt::format("verified: {} model tensors ({} parameters) load with the shapes "
                                    "config.json implies", specs.size(), elements);
  int bias_layers = 0;  // the aux-free router bias, where the checkpoint holds it
  for (const auto& spec : nn::router_bias_specs(ck.config)) {
    if (!ck.model.contains(ck.model_prefix + spec.name)) continue;
    std::vector<float> bias(static_cast<std::size_t>(shape_numel(spec.shape)));
    ck.read_param(spec.name, spec.shape, bias.data());
    check_finite(bias.data(), shape_numel(spec.shape), ck.model_prefix + spec.name, ck.model.file_of(ck.model_prefix + spec.name));
    ++bias_layers;
  }
  if (bias_layers > 0) summary += fmt::format(", and the router bias of {} layers", bias_layers);

  const std::string trident_file = join_path(ck.path, kTridentFile);
  const std::int64_t dir_step = parse_step_name(fs::path(ck.path).filename().string());
  if (is_file(trident_file)) {
    TRI_CHECK(ck.trident.is_object(), "{} is not a JSON object", trident_file);
    TRI_CHECK(ck.trident.contains("step") && ck.trident["step"].is_number_integer() &&
                  ck.trident["step"].get<std::int64_t>() >= 0,
              "{}: field 'step' is {}, not a non-negative integer; without it a resumed run "
              "would not know where its schedule and data stand",
              trident_file, ck.trident.contains("step") ? ck.trident["step"].dump() : "missing");
    TRI_CHECK(dir_step < 0 || ck.step == dir_step,
              "{}: field 'step' is {} but the directory is {}", trident_file, ck.step,
              fs::path(ck.path).filename().string());
  }
  if (ck.optimizer) {
    validate_optimizer_tensors(*ck.optimizer, ck.config);
    for (const auto& spec : nn::trained_tensor_specs(ck.config)) {
      for (const std::string& name : {exp_avg_name(spec.name), exp_avg_sq_name(spec.name)}) {
        buffer.resize(std::max(buffer.size(), static_cast<std::size_t>(shape_numel(spec.shape))));
        ck.optimizer->read(name, spec.shape, buffer.data());
        check_finite(buffer.data(), shape_numel(spec.shape), name, ck.optimizer->path());
      }
    }
    const auto opt_step = ck.optimizer_step();  // throws on a non-integer
    TRI_CHECK(opt_step.has_value() && *opt_step >= 0,
              "optimizer state {} has no non-negative integer 'step' in its metadata (AdamW's bias "
              "correction needs it)", ck.optimizer->path());
    TRI_CHECK(ck.step < 0 || *opt_step <= ck.step,
              "optimizer state {} is at AdamW step {}, beyond the run's step {} in {}: the two "
              "files do not belong together", ck.optimizer->path(), *opt_step, ck.step, trident_file);
    summary += fmt::format("; optimizer state complete (AdamW step {})", *opt_step);
  }
  if (ck.config.lora.enabled()) {
    const std::string file = join_path(ck.path, kAdapterFile);
    const SafetensorsReader adapters(file);
    for (const auto& spec : nn::lora_tensor_specs(ck.config)) {
      buffer.resize(std::max(buffer.size(), static_cast<std::size_t>(shape_numel(spec.shape))));
      adapters.read(nn::peft_tensor_name(ck.config, spec.name), spec.shape, buffer.data());
      check_finite(buffer.data(), shape_numel(spec.shape), spec.name, file);
    }
    summary += fmt::format("; LoRA adapters complete (r {}, {})", ck.config.lora.rank, fmt::join(ck.config.lora.targets, ","));
  }
  return summary + "; all finite";
}

// ---------------------------------------------------------------------------------------------
// describe

std::string describe_checkpoint(const std::string& path) {
  LoadedCheckpoint ck = open_checkpoint(path);
  std::string out;
  out += fmt::format("checkpoint: {}\n", ck.path);
  out += fmt::format("step: {}\n", ck.step >= 0 ? std::to_string(ck.step) : std::string("unknown (no trident.json)"));
  const auto& c = ck.config;
  out += fmt::format("config: {}\n", c.describe());
  std::int64_t total = 0;
  std::uint64_t bytes = 0;
  std::size_t width = 4;
  for (const auto& t : ck.model.tensors()) width = std::max(width, t.name.size());
  std::string rows;
  for (const auto& t : ck.model.tensors()) {
    rows += fmt::format("  {:<{}}  {:<14}  {}\n", t.name, width, shape_str(t.shape), dtype_name(t.dtype));
    if (!ignorable_hf_tensor(c, t.name, ck.model_prefix)) total += t.numel();
    bytes += t.end - t.begin;
  }
  for (const std::string& w : ck.model.warnings()) out += fmt::format("warning: {}\n", w);
  out += fmt::format("{}: {} tensors, {} parameters, {}\n",
                     ck.model.sharded() ? fmt::format("{} ({} shards)", kModelIndexFile, ck.model.shards().size())
                                        : std::string(kModelFile),
                     ck.model.tensors().size(),
                     total, format_bytes(bytes));
  out += rows;
  try {
    validate_model_tensors(ck.model, ck.config, ck.model_prefix);
    out += fmt::format("model tensors: match config.json ({} parameters expected)\n", c.num_parameters());
  } catch (const Error& e) {
    out += fmt::format("model tensors: DO NOT MATCH config.json: {}\n", e.what());
  }
  if (ck.optimizer) {
    const auto step = ck.optimizer_step();
    out += fmt::format("optimizer state: present ({} tensors, step {})", ck.optimizer->tensors().size(),
                       step ? std::to_string(*step) : std::string("unknown"));
    try {
      validate_optimizer_tensors(*ck.optimizer, ck.config);
      out += ", AdamW exp_avg and exp_avg_sq for every parameter\n";
    } catch (const Error& e) {
      out += fmt::format("\n  INCOMPLETE: {}\n", e.what());
    }
  } else {
    out += "optimizer state: absent (usable with --init-from, not --resume)\n";
  }
  if (ck.trident.is_object()) {
    std::vector<std::string> keys;
    for (auto it = ck.trident.begin(); it != ck.trident.end(); ++it) keys.push_back(it.key());
    out += fmt::format("trident.json: {}\n", fmt::join(keys, ", "));
  } else {
    out += "trident.json: absent\n";
  }
  return out;
}

}  // namespace trident::ckpt
