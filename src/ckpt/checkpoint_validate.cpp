// Checking a checkpoint's tensors against the model its config.json describes: names, shapes,
// dtypes, the optimizer state's completeness, and finiteness.
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "ckpt/checkpoint.h"
#include "ckpt/checkpoint_detail.h"
#include "core/check.h"
#include "nn/lora_checkpoint.h"
#include "nn/moe_router.h"

namespace trident::ckpt {

using detail::ignorable_hf_tensor;
using detail::list_limited;
using detail::problem_list;

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

void check_finite(const float* data, std::int64_t n, const std::string& tensor, const std::string& file) {
  check_finite(data, n, -1, tensor, file);
}

// begin < 0: the whole tensor.
void check_finite(const float* data, std::int64_t n, std::int64_t begin, const std::string& tensor,
                  const std::string& file) {
  std::int64_t first = -1, bad = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(data[i])) {
      if (first < 0) first = i;
      ++bad;
    }
  }
  if (bad == 0) return;
  const std::string of = begin < 0 ? fmt::format("{} of {} elements are", bad, n)
                                   : fmt::format("{} of its elements [{}, {}) are", bad, begin, begin + n);
  TRI_FAIL("tensor '{}' in {} holds {} at element {} ({} not finite): Trident never writes non-finite values, "
           "so this file is damaged or comes from a diverged run",
           tensor, file, data[first], std::max<std::int64_t>(begin, 0) + first, of);
}

}  // namespace trident::ckpt
