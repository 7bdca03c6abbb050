// Building, saving and loading quantized models (see quantized_model.h).
#include "quant/quantized_model.h"

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "ckpt/atomic_file.h"
#include "ckpt/base_fingerprint.h"
#include "ckpt/checkpoint.h"
#include "ckpt/checksums.h"
#include "core/crc32c.h"
#include "ckpt/safetensors.h"
#include "core/check.h"
#include "nn/architecture.h"
#include "nn/moe_router.h"

namespace trident::quant {

namespace fs = std::filesystem;

const std::vector<float>& QuantizedModel::tensor(const std::string& name) const {
  const auto it = tensors.find(name);
  TRI_CHECK(it != tensors.end(), "the model holds no fp32 tensor '{}'", name);
  return it->second;
}

const QuantMatrix& QuantizedModel::matrix(const std::string& name) const {
  const auto it = matrices.find(name);
  TRI_CHECK(it != matrices.end(), "the model holds no matrix '{}'", name);
  return it->second;
}

int64_t QuantizedModel::matrix_bytes() const {
  int64_t b = 0;
  for (const auto& [n, m] : matrices) b += m.weight_bytes();
  return b;
}

int64_t QuantizedModel::tensor_bytes() const {
  int64_t b = 0;
  for (const auto& [n, t] : tensors) b += static_cast<int64_t>(t.size()) * 4;
  return b;
}

std::vector<nn::ParamDecl> declared_params(const nn::ModelConfig& c) {
  const nn::Architecture& arch = nn::architecture(c.family);
  std::vector<nn::ParamDecl> all = arch.embedding_params(c);
  for (int l = 0; l < c.n_layer; ++l) {
    for (auto& d : arch.layer_params(c, l)) all.push_back(std::move(d));
  }
  for (auto& d : arch.head_params(c)) all.push_back(std::move(d));
  return all;
}

std::vector<nn::ParamDecl> inference_tensors(const nn::ModelConfig& c) {
  std::vector<nn::ParamDecl> all = declared_params(c);
  for (const nn::TensorSpec& s : nn::router_bias_specs(c)) all.push_back(nn::ParamDecl{.name = s.name, .shape = s.shape});
  return all;
}

bool is_quantizable(const nn::ParamDecl& d, const nn::ModelConfig& c) {
  return nn::is_packable(d) && nn::architecture(c.family).layer_of(d.name) >= 0;
}

namespace {

// (O, I) = the [out, in] view of a declared matrix.
std::pair<int64_t, int64_t> out_in(const nn::ParamDecl& d) {
  return d.in_out ? std::pair{d.shape[1], d.shape[0]} : std::pair{d.shape[0], d.shape[1]};
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  TRI_CHECK(in.good(), "cannot read '{}'", path);
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    TRI_FAIL("'{}' is not valid JSON: {}", path, e.what());
  }
}

std::vector<std::byte> as_bytes(const void* p, std::size_t n) {
  std::vector<std::byte> b(n);
  std::memcpy(b.data(), p, n);
  return b;
}

}  // namespace

QuantizedModel build_quantized_model(const nn::ModelConfig& c, const ReadTensor& read, Format format, int group) {
  QuantizedModel m;
  m.config = c, m.format = format, m.group = format == Format::kQ4 ? group : 0;
  if (format == Format::kQ4) {
    TRI_CHECK(valid_group_size(group), "q4 group size {} is not supported; use --group-size 32, 64 or 128", group);
  }
  std::vector<float> buf, t;
  for (const nn::ParamDecl& d : inference_tensors(c)) {
    buf.resize(static_cast<std::size_t>(shape_numel(d.shape)));
    read(d, buf.data());
    if (!is_quantizable(d, c)) {
      m.tensors[d.name] = buf;
      continue;
    }
    const auto [O, I] = out_in(d);
    const float* w = buf.data();
    if (d.in_out) {  // Conv1D [in, out] -> [out, in]
      t.resize(buf.size());
      for (int64_t i = 0; i < I; ++i) {
        for (int64_t o = 0; o < O; ++o) t[static_cast<std::size_t>(o * I + i)] = buf[static_cast<std::size_t>(i * O + o)];
      }
      w = t.data();
    }
    try {
      m.matrices[d.name] = quantize(w, O, I, format, group);
    } catch (const Error& e) {
      TRI_FAIL("cannot quantize '{}' ({} x {} as [out, in]): {}", d.name, O, I, e.what());
    }
  }
  return m;
}

bool is_quantized_checkpoint(const std::string& path) {
  const std::string config = (fs::path(path) / ckpt::kConfigFile).string();
  if (!fs::is_regular_file(config)) return false;
  const nlohmann::json j = read_json(config);
  return j.is_object() && j.contains(kQuantizationKey);
}

void save_quantized(const QuantizedModel& m, const std::string& dir) {
  TRI_CHECK(m.format != Format::kFp32, "save_quantized needs an int8 or q4 model");
  ckpt::StagedDirectory out = ckpt::stage_new_output_dir(dir);
  ckpt::SafetensorsWriter w;
  for (const nn::ParamDecl& d : inference_tensors(m.config)) {
    if (!is_quantizable(d, m.config)) {
      w.add_tensor(d.name, d.shape, m.tensor(d.name).data());
      continue;
    }
    const QuantMatrix& q = m.matrix(d.name);
    if (q.format == Format::kInt8) {
      w.add_raw_tensor(d.name, ckpt::DType::kI8, {q.rows, q.cols}, as_bytes(q.q8.data(), q.q8.size()));
      w.add_tensor(d.name + ".scale", {q.rows}, q.scale.data());
    } else {
      w.add_raw_tensor(d.name, ckpt::DType::kU8, {q.rows, q.cols / 2}, as_bytes(q.q4.data(), q.q4.size()));
      w.add_tensor(d.name + ".scale", {q.rows, q.groups_per_row()}, q.scale.data());
      w.add_tensor(d.name + ".offset", {q.rows, q.groups_per_row()}, q.offset.data());
    }
  }
  w.set_metadata("format", std::string(format_name(m.format)));
  const std::uint32_t crc = w.write((fs::path(out.path()) / ckpt::kModelFile).string());
  nlohmann::json config = nn::model_config_to_hf_json(m.config);
  config[kQuantizationKey] = {
      {"quant_method", m.method},
      {"format", format_name(m.format)},
      {"group_size", m.group},
      {"symmetric", m.format == Format::kInt8},
      {"weight_layout", "[out, in]"},
      {"quantized", "2-D matmul parameters of the layers"},
      {"kept_fp32", "embeddings (and the tied LM head), untied LM head, norms, biases"}};
  if (!m.base_fingerprint.empty()) config[ckpt::kBaseFingerprintKey] = m.base_fingerprint;
  // Like a training checkpoint's trident.json record (ckpt/checksums.h): every load verifies it.
  config[ckpt::kOutputChecksumsKey] = {{ckpt::kModelFile, crc32c_string(crc)}};
  ckpt::write_file_atomic((fs::path(out.path()) / ckpt::kConfigFile).string(), config.dump(2) + "\n");
  ckpt::commit_new_output_dir(out);
}

namespace {

struct QuantHeader {
  nn::ModelConfig config;
  Format format;
  int group;
  std::string method;
  std::string base_fingerprint;
};

QuantHeader read_header(const std::string& dir) {
  const std::string path = (fs::path(dir) / ckpt::kConfigFile).string();
  nlohmann::json j = read_json(path);
  TRI_CHECK(j.is_object() && j.contains(kQuantizationKey) && j[kQuantizationKey].is_object(),
            "{} has no {} object: not a quantized checkpoint", path, kQuantizationKey);
  const nlohmann::json q = j[kQuantizationKey];
  j.erase(kQuantizationKey);
  std::string fingerprint;
  if (j.contains(ckpt::kBaseFingerprintKey)) {
    TRI_CHECK(j[ckpt::kBaseFingerprintKey].is_string(), "{}: {} must be a string", path, ckpt::kBaseFingerprintKey);
    fingerprint = j[ckpt::kBaseFingerprintKey].get<std::string>();
    j.erase(ckpt::kBaseFingerprintKey);
  }
  QuantHeader h{nn::model_config_from_hf_json(j, path), Format::kFp32, 0, kMethodRtn, fingerprint};
  if (q.contains("quant_method")) {
    TRI_CHECK(q["quant_method"].is_string() && (q["quant_method"] == kMethodRtn || q["quant_method"] == kMethodGptq),
              "{}: {}.quant_method must be \"{}\" or \"{}\"", path, kQuantizationKey, kMethodRtn, kMethodGptq);
    h.method = q["quant_method"].get<std::string>();
  }
  TRI_CHECK(q.contains("format") && q["format"].is_string(), "{}: {}.format is missing", path, kQuantizationKey);
  h.format = parse_format(q["format"].get<std::string>());
  if (h.format == Format::kQ4) {
    TRI_CHECK(q.contains("group_size") && q["group_size"].is_number_integer() &&
                  valid_group_size(q["group_size"].get<int>()),
              "{}: {}.group_size must be 32, 64 or 128", path, kQuantizationKey);
    h.group = q["group_size"].get<int>();
  }
  return h;
}

// A packed tensor's bytes into `dst` (resized), after its dtype and shape are checked.
template <class Byte>
void read_packed(const ckpt::SafetensorsReader& r, const std::string& name, ckpt::DType dtype, const Shape& shape,
                 std::vector<Byte>& dst) {
  static_assert(sizeof(Byte) == 1);
  const ckpt::TensorInfo& info = r.info(name);
  TRI_CHECK(info.dtype == dtype && info.shape == shape,
            "tensor '{}' in {} is {} {} but the quantized format needs {} {}; the file is damaged or "
            "was not written by `trident quantize`", name, r.path(), ckpt::dtype_name(info.dtype),
            shape_str(info.shape), ckpt::dtype_name(dtype), shape_str(shape));
  dst.resize(static_cast<std::size_t>(info.end - info.begin));
  r.read_raw(name, std::as_writable_bytes(std::span<Byte>(dst)));
}

void check_scales(const std::vector<float>& v, const std::string& name, const std::string& file, bool positive) {
  for (std::size_t k = 0; k < v.size(); ++k) {
    TRI_CHECK(std::isfinite(v[k]) && (!positive || v[k] > 0.0f),
              "tensor '{}' in {} holds {} at element {}: a quantization {} must be finite{}; the "
              "checkpoint is damaged (quantize the fp32 checkpoint again)", name, file, v[k], k,
              positive ? "scale" : "offset", positive ? " and positive" : "");
  }
}

}  // namespace

namespace {

nlohmann::json trident_json_of(const std::string& dir) {
  const fs::path t = fs::path(dir) / ckpt::kTridentFile;  // a QLoRA step directory's; outputs have none
  return fs::is_regular_file(t) ? read_json(t.string()) : nlohmann::json(nullptr);
}

}  // namespace

PackedFormat quantized_format(const std::string& dir) {
  const QuantHeader h = read_header(dir);
  return {h.format, h.group};
}

QuantizedModel load_quantized(const std::string& dir, bool check_checksums) {
  const QuantHeader h = read_header(dir);
  const ckpt::SafetensorsReader r((fs::path(dir) / ckpt::kModelFile).string());
  // The checksum check folded into this load's reads: the file is read once (ckpt/checksums.h).
  if (check_checksums) r.checksum_reads();
  QuantizedModel m;
  m.config = h.config, m.format = h.format, m.group = h.group, m.method = h.method;
  m.base_fingerprint = h.base_fingerprint;
  std::size_t expected_tensors = 0;
  for (const nn::ParamDecl& d : inference_tensors(h.config)) {
    if (!is_quantizable(d, h.config)) {
      std::vector<float> t = r.get(d.name, d.shape);
      ckpt::check_finite(t.data(), static_cast<int64_t>(t.size()), d.name, r.path());
      m.tensors[d.name] = std::move(t);
      ++expected_tensors;
      continue;
    }
    const auto [O, I] = out_in(d);
    QuantMatrix q;
    q.format = h.format, q.rows = O, q.cols = I;
    if (h.format == Format::kInt8) {
      read_packed(r, d.name, ckpt::DType::kI8, {O, I}, q.q8);
      q.scale = r.get(d.name + ".scale", {O});
      check_scales(q.scale, d.name + ".scale", r.path(), true);
      q.finish_int8();
      expected_tensors += 2;
    } else {
      TRI_CHECK(I % h.group == 0, "'{}' has {} inputs per row, which group size {} does not divide", d.name, I, h.group);
      q.group = h.group;
      read_packed(r, d.name, ckpt::DType::kU8, {O, I / 2}, q.q4);
      q.scale = r.get(d.name + ".scale", {O, I / h.group});
      q.offset = r.get(d.name + ".offset", {O, I / h.group});
      check_scales(q.scale, d.name + ".scale", r.path(), true);
      check_scales(q.offset, d.name + ".offset", r.path(), false);
      expected_tensors += 3;
    }
    m.matrices[d.name] = std::move(q);
  }
  TRI_CHECK(r.tensors().size() == expected_tensors, "{} holds {} tensors but a {} checkpoint of {} has {}",
            r.path(), r.tensors().size(), format_name(h.format), h.config.describe(), expected_tensors);
  // Last, as load_checkpoint does: a damaged file's own error (a shape, a NaN scale) names it better.
  if (check_checksums) {
    const ckpt::SafetensorsReader* const read_by[] = {&r};
    ckpt::verify_checksums(dir, trident_json_of(dir), read_by);
  }
  return m;
}

nn::ModelConfig inference_config(const std::string& path) {
  // The config alone: the load that reads the weights (load_for_inference, train) checks the checksums.
  return is_quantized_checkpoint(path) ? read_header(path).config
                                       : ckpt::load_checkpoint(path, ckpt::ChecksumCheck::kSkip).config;
}

QuantizedModel load_for_inference(const std::string& path) {
  if (is_quantized_checkpoint(path)) return load_quantized(path);
  // Every weight is read, so the checksums come from those reads (one pass over each file).
  const ckpt::LoadedCheckpoint ck = ckpt::load_checkpoint(path, ckpt::ChecksumCheck::kAfterReads);
  QuantizedModel m;
  ck.load_then_verify([&] {
    m = build_quantized_model(
        ck.config,
        [&](const nn::ParamDecl& d, float* dst) {
          ck.read_param(d.name, d.shape, dst);
          ckpt::check_finite(dst, shape_numel(d.shape), ck.model_prefix + d.name,
                             ck.model.file_of(ck.model_prefix + d.name));
        },
        Format::kFp32, 0);
  });
  return m;
}

std::string describe_quantized(const std::string& dir) {
  const QuantHeader h = read_header(dir);
  const ckpt::SafetensorsReader r((fs::path(dir) / ckpt::kModelFile).string());
  std::string out = fmt::format("checkpoint: {} (quantized, format {}{}, method {}; generate and eval read it, train "
                                "only as a frozen QLoRA base)\n",
                                dir, format_name(h.format), h.format == Format::kQ4 ? fmt::format(", group size {}", h.group) : "",
                                h.method);
  out += fmt::format("model: {}\n", h.config.describe());
  uint64_t bytes = 0;
  out += fmt::format("tensors ({}):\n", r.tensors().size());
  for (const ckpt::TensorInfo& t : r.tensors()) {
    out += fmt::format("  {:<48} {:<14} {}\n", t.name, shape_str(t.shape), ckpt::dtype_name(t.dtype));
    bytes += t.end - t.begin;
  }
  out += fmt::format("tensor bytes: {} ({:.2f} per parameter of {})\n", bytes,
                     static_cast<double>(bytes) / static_cast<double>(h.config.num_parameters()), h.config.num_parameters());
  return out;
}

}  // namespace trident::quant
