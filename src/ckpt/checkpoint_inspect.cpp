// `trident ckpt verify` (every tensor read and checked finite) and `trident ckpt info` (a
// summary that reports problems instead of failing on them).
#include <fmt/ranges.h>

#include <algorithm>
#include <filesystem>

#include "ckpt/checkpoint.h"
#include "ckpt/checkpoint_detail.h"
#include "ckpt/checksums.h"
#include "core/check.h"
#include "nn/lora_checkpoint.h"
#include "nn/moe_router.h"

namespace fs = std::filesystem;

namespace trident::ckpt {

using namespace detail;

namespace {

std::string format_bytes(std::uint64_t b) {
  if (b >= (1ull << 30)) return fmt::format("{:.2f} GiB", static_cast<double>(b) / (1ull << 30));
  if (b >= (1ull << 20)) return fmt::format("{:.1f} MiB", static_cast<double>(b) / (1ull << 20));
  if (b >= (1ull << 10)) return fmt::format("{:.1f} KiB", static_cast<double>(b) / (1ull << 10));
  return fmt::format("{} B", b);
}

}  // namespace

std::string verify_checkpoint(const std::string& path) {
  LoadedCheckpoint ck = open_checkpoint(path);  // config.json parsed and validated
  // Every tensor is read below, so the checksums come from those reads: each file read once.
  ck.model.checksum_reads();
  if (ck.optimizer) ck.optimizer->checksum_reads();
  std::optional<SafetensorsReader> adapters;
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
    adapters.emplace(file);
    adapters->checksum_reads();
    for (const auto& spec : nn::lora_tensor_specs(ck.config)) {
      buffer.resize(std::max(buffer.size(), static_cast<std::size_t>(shape_numel(spec.shape))));
      adapters->read(nn::peft_tensor_name(ck.config, spec.name), spec.shape, buffer.data());
      check_finite(buffer.data(), shape_numel(spec.shape), spec.name, file);
    }
    summary += fmt::format("; LoRA adapters complete (r {}, {})", ck.config.lora.rank, fmt::join(ck.config.lora.targets, ","));
  }
  summary += "; all finite";
  std::vector<const SafetensorsReader*> readers;
  for (const SafetensorsReader& shard : ck.model.shards()) readers.push_back(&shard);
  if (ck.optimizer) readers.push_back(&*ck.optimizer);
  if (adapters) readers.push_back(&*adapters);
  if (const int files = verify_checksums(ck.path, ck.trident, readers); files > 0) {
    std::uint64_t read = 0, size = 0;
    for (const SafetensorsReader* r : readers) read += r->bytes_read(), size += fs::file_size(r->path());
    summary += fmt::format("; {} file(s) match their recorded crc32c (checked as read: {} read of the files' {})",
                           files, read, size);
  }
  return summary;
}

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
