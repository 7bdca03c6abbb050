// Checkpoint directories: ROOT/step_NNNNNNNN/ holding model.safetensors (logical fp32 tensors
// with the family's Hugging Face names), config.json (the family's Hugging Face keys, so
// Hugging Face's own loader accepts the directory), optimizer.safetensors
// (AdamW moments "<param>.exp_avg" / "<param>.exp_avg_sq", step in metadata) and trident.json
// (free-form run state given by the caller), committed atomically; ROOT/latest names the newest.
// Layout-free: this layer never sees shards or model classes. Gathering shards into logical
// tensors (and slicing them back) is left to the model/parallel code; what goes into
// trident.json and how training resumes is left to train/.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "ckpt/safetensors.h"
#include "ckpt/safetensors_set.h"
#include "nn/architecture.h"
#include "nn/model_config.h"

namespace trident::ckpt {

inline constexpr const char* kModelFile = "model.safetensors";
inline constexpr const char* kModelIndexFile = "model.safetensors.index.json";  // sharded HF weights
inline constexpr const char* kConfigFile = "config.json";
inline constexpr const char* kOptimizerFile = "optimizer.safetensors";
// A LoRA run's adapters in PEFT's names and PEFT's config (nn/lora_checkpoint.h).
inline constexpr const char* kAdapterFile = "adapter_model.safetensors";
inline constexpr const char* kAdapterConfigFile = "adapter_config.json";
inline constexpr const char* kTridentFile = "trident.json";
inline constexpr const char* kLatestFile = "latest";

std::string step_dir_name(std::int64_t step);  // 42 -> "step_00000042"
std::int64_t step_from_dir_name(const std::string& name);  // "step_00000042" -> 42; else -1
// The step ROOT/latest names; -1 when there is no latest file or it names no step directory.
std::int64_t latest_step(const std::string& root);

// ---------------------------------------------------------------------------------------------
// Tensor names.

// The logical tensors of a model, from its architecture's declaration (nn/architecture.h).
using nn::TensorSpec;

// Optimizer-state names for a parameter: "<param>.exp_avg", "<param>.exp_avg_sq".
std::string exp_avg_name(const std::string& param);
std::string exp_avg_sq_name(const std::string& param);

// ---------------------------------------------------------------------------------------------
// config.json (nn::model_config_to_hf_json / model_config_from_hf_json hold the keys).

nn::ModelConfig read_model_config(const std::string& config_json_path);

// Throws "checkpoint X has n_embd 384 but the model has 768; ..." listing every difference.
void check_same_model_shape(const nn::ModelConfig& checkpoint, const nn::ModelConfig& model,
                            const std::string& checkpoint_path);

// ---------------------------------------------------------------------------------------------
// Writing.

// Collects one checkpoint and commits it atomically:
//   1. everything is written into ROOT/.step_NNNNNNNN.tmp/ (each file fsynced),
//   2. that directory is renamed to ROOT/step_NNNNNNNN/ (replacing an existing one atomically),
//   3. ROOT/latest is rewritten atomically to "step_NNNNNNNN".
// `latest` never moves backwards: commit() refuses, before writing anything, a step older than
// the one ROOT/latest names (the same step is replaced atomically).
// A failure at any point (a provider that throws, a full disk) removes the staging directory
// and leaves the previous step directories and `latest` untouched. Nothing is written before
// commit(); tensors are pulled from their providers one at a time during commit(), so a caller
// can gather one logical tensor at a time.
class CheckpointWriter {
 public:
  CheckpointWriter(std::string root, std::int64_t step, const nn::ModelConfig& config);

  // Model tensors (add them all; commit() checks the set against nn::model_tensor_specs()).
  SafetensorsWriter& model() { return model_; }
  // LoRA runs: the adapters under PEFT's names (commit() checks them against
  // nn::lora_tensor_specs()), written with `adapter_config` as adapter_config.json.
  SafetensorsWriter& adapters() { return adapters_; }
  void set_adapter_config(nlohmann::json adapter_config) { adapter_config_ = std::move(adapter_config); }
  // AdamW state; optional. Add exp_avg_name(p) / exp_avg_sq_name(p) for each trained parameter p
  // (nn::trained_tensor_specs: a LoRA run's adapters only).
  // The optimizer step is stored in its metadata as "step"; more metadata may be added.
  SafetensorsWriter& optimizer() { return optimizer_; }
  void set_optimizer_step(std::int64_t optimizer_step);
  // Free-form run state (run config, data position, RNG, metrics). "step" is always set to the
  // checkpoint's step.
  void set_trident_json(nlohmann::json state) { trident_ = std::move(state); }
  // QLoRA: the frozen base is the quantized checkpoint DIR, kept packed: its model.safetensors
  // and config.json are copied byte for byte instead of model tensors (add none), so the step
  // directory is itself a quantized checkpoint plus the run's files.
  void set_packed_base(std::string dir) { packed_base_ = std::move(dir); }

  // Writes, commits, updates latest; returns ROOT/step_NNNNNNNN.
  std::string commit();

 private:
  std::string root_;
  std::int64_t step_;
  nn::ModelConfig config_;
  SafetensorsWriter model_;
  SafetensorsWriter optimizer_;
  SafetensorsWriter adapters_;
  nlohmann::json adapter_config_;
  nlohmann::json trident_ = nlohmann::json::object();
  std::optional<std::int64_t> optimizer_step_;
  std::string packed_base_;
};

// ---------------------------------------------------------------------------------------------
// Reading.

// ROOT/latest resolved and checked: throws when ROOT does not exist, has no `latest` (listing
// the step directories that do exist), or `latest` names a missing or incomplete directory.
std::string latest_checkpoint(const std::string& root);
// Step directories under ROOT that look complete (hold model.safetensors and config.json),
// sorted by step.
std::vector<std::string> list_step_dirs(const std::string& root);
// PATH itself when it holds model.safetensors (or a sharded Hugging Face directory's
// model.safetensors.index.json); otherwise latest_checkpoint(PATH).
std::string resolve_checkpoint(const std::string& path);

struct LoadedCheckpoint {
  std::string path;                         // the step directory (or HF-style directory)
  nn::ModelConfig config;                     // from config.json
  SafetensorsSet model;                     // model.safetensors, or a sharded HF directory's shards
  std::optional<SafetensorsReader> optimizer;  // optimizer.safetensors when present
  nlohmann::json trident;                   // trident.json, or null when absent
  std::int64_t step = -1;                   // trident.json "step", else -1 (e.g. a HF model)
  // "" or the architecture's alternative prefix ("transformer." from GPT2LMHeadModel).
  std::string model_prefix;

  // Reads the logical parameter with the Hugging Face name `name` (no prefix) into dst.
  void read_param(const std::string& name, const Shape& shape, float* dst) const;
  std::optional<std::int64_t> optimizer_step() const;  // optimizer metadata "step"
  // The recorded checksums (ckpt/checksums.h) checked through this checkpoint's readers: after a
  // load_checkpoint(..., kAfterReads) whose caller read the tensors, only what it did not read
  // is read now. Throws as verify_checksums; returns the files checked.
  int verify_checksums() const;
  // Runs `load` (which reads this checkpoint's tensors), then verify_checksums(). Where `load`
  // throws, the checksums are checked first: a damaged file is then named as such rather than by
  // a symptom of its bytes (a NaN read, a bad value), and the load's own error stands otherwise.
  void load_then_verify(const std::function<void()>& load) const;
};

// When load_checkpoint checks the files' recorded checksums (ckpt/checksums.h).
enum class ChecksumCheck {
  kNow,         // before it returns: one pass over each file of its own
  kAfterReads,  // the caller's: the readers checksum what they read (checksum_reads), and the
                // caller calls verify_checksums() once it has read the weights, before it uses
                // them; a single process that reads whole files (generate, eval, quantize,
                // train at one rank) so reads each file once
  kSkip,        // not at all: the config alone is wanted, or another rank or call checks them
};

// Loads PATH (a step directory, a ROOT with `latest`, or a Hugging Face directory with only
// model.safetensors + config.json) and validates the model tensors against config.json, and
// the checksums as `checksums` says. A multi-rank run has rank 0 check them in a pass of its own
// (train/trainer.cpp, kSkip here), so no rank that loads only its slices reads whole files.
LoadedCheckpoint load_checkpoint(const std::string& path, ChecksumCheck checksums = ChecksumCheck::kNow);

// Checks every expected model tensor's name, shape and dtype against `config`; one error lists
// all that is missing, mismatched or extra, and infers the checkpoint's shape where it can
// ("checkpoint has n_embd 384 but the model has 768"). Buffers Hugging Face saves beside the
// parameters (the architecture's ignorable_tensor) are ignored.
// `prefix` as in LoadedCheckpoint::model_prefix.
void validate_model_tensors(const SafetensorsSet& reader, const nn::ModelConfig& config,
                            const std::string& prefix = "");
// The file a set's tensors come from, for messages: model.safetensors or the index.
std::string model_source(const SafetensorsSet& set);
// Checks optimizer.safetensors holds exp_avg and exp_avg_sq for every trained tensor (every model
// tensor, or a LoRA run's adapters), same shapes.
void validate_optimizer_tensors(const SafetensorsReader& reader, const nn::ModelConfig& config);

// Throws "tensor 'NAME' in FILE holds NaN at element 17 (3 of 4096 elements are not finite)"
// when any of the n floats is NaN or inf: no checkpoint Trident writes holds one, so a file
// that does is damaged or comes from a diverged run.
void check_finite(const float* data, std::int64_t n, const std::string& tensor, const std::string& file);
// The same for elements [begin, begin + n) of the tensor (a slice read on its own).
void check_finite(const float* data, std::int64_t n, std::int64_t begin, const std::string& tensor,
                  const std::string& file);

// Everything a load reads, checked as `ckpt info` promises: config.json is a valid config of
// a supported family; model.safetensors has every tensor config.json implies, with that shape, readable
// and finite; optimizer.safetensors (when present) has both moments of every parameter,
// finite, and an integer step no larger than the run's; trident.json (when present) is an
// object whose "step" is a non-negative integer equal to the directory's step_NNNNNNNN.
// Throws naming the file (and tensor or field) of the first problem; returns a summary line.
std::string verify_checkpoint(const std::string& path);

// Human-readable summary for `trident ckpt info`: step, config, tensors (name, shape, dtype),
// total parameters, optimizer state, trident.json keys.
std::string describe_checkpoint(const std::string& path);

}  // namespace trident::ckpt
