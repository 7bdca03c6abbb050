// A model's weights ready for inference, each layer matrix either fp32 or packed
// (quant/quant_format.h), and the quantized checkpoint directory format:
//   DIR/model.safetensors: every tensor the family declares, under its Hugging Face name;
//     a quantized matrix NAME [out, in] is NAME (I8 [O, I], or U8 [O, I/2] for q4) with
//     NAME.scale (F32 [O], or [O, I/G]) and, for q4, NAME.offset (F32 [O, I/G], the group
//     minimum: the zero point in weight units) beside it; everything else stays F32 as saved.
//   DIR/config.json: the family's Hugging Face keys plus "quantization_config" naming the format.
// Which matrices are quantized is derived from the declarations (nn/architecture.h): every 2-D
// matmul parameter of the layers. Kept fp32: the token (and position) embedding, which is
// also the tied LM head (a lookup reads one row per token, so packing saves little per token
// and the head's logits feed the loss directly), an untied LM head likewise, the norms and
// the biases (a few C-sized vectors per layer: no bandwidth to win, and the norms' gains
// scale every channel of the residual stream).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "nn/model_config.h"
#include "nn/param_decl.h"
#include "quant/quant_format.h"

namespace trident::quant {

inline constexpr const char* kQuantizationKey = "quantization_config";
inline constexpr const char* kMethodRtn = "trident-rtn";
inline constexpr const char* kMethodGptq = "trident-gptq";

struct QuantizedModel {
  nn::ModelConfig config;
  Format format = Format::kFp32;
  int group = 0;
  // config.json's quantization_config.quant_method: how the codes were chosen (the format is
  // the same either way): kMethodRtn (round to nearest) or kMethodGptq (quant/gptq.h).
  std::string method = kMethodRtn;
  // The fp32 origin's fingerprint (ckpt/base_fingerprint.h), config.json's trident_base_fingerprint:
  // the base a LoRA adapter trained on this model, or on its origin, belongs to; "" when unknown.
  std::string base_fingerprint;
  std::map<std::string, std::vector<float>> tensors;  // fp32, as declared (Hugging Face layout)
  std::map<std::string, QuantMatrix> matrices;        // [out, in]

  // Throw naming the tensor when it is not held.
  const std::vector<float>& tensor(const std::string& name) const;
  const QuantMatrix& matrix(const std::string& name) const;
  int64_t matrix_bytes() const;  // packed layer matrices, with scales and offsets
  int64_t tensor_bytes() const;  // the fp32 rest
};

// Every parameter the family declares, in checkpoint order (embedding, layers, head).
std::vector<nn::ParamDecl> declared_params(const nn::ModelConfig& c);
// What inference reads and a quantized checkpoint holds: declared_params, then the fp32 state
// tensors a checkpoint carries beside them (the aux-free router bias, nn/moe_router.h), which
// every format keeps fp32.
std::vector<nn::ParamDecl> inference_tensors(const nn::ModelConfig& c);
// The matrices quantization packs: 2-D matmul parameters of the layers.
bool is_quantizable(const nn::ParamDecl& d, const nn::ModelConfig& c);

// From fp32 logical tensors; `read(decl, dst)` fills a declared tensor. Matrices are packed to
// `format` (fp32 keeps them, transposed to [out, in]).
using ReadTensor = std::function<void(const nn::ParamDecl&, float*)>;
QuantizedModel build_quantized_model(const nn::ModelConfig& c, const ReadTensor& read, Format format, int group);

// Whether PATH (a directory) holds a quantized checkpoint (config.json has quantization_config).
bool is_quantized_checkpoint(const std::string& path);
// Writes DIR (refused when it exists and is not empty); files are written atomically.
void save_quantized(const QuantizedModel& m, const std::string& dir);
// Reads a quantized checkpoint, checking every packed tensor's dtype and shape and that every
// scale is finite and positive and every offset finite (a corrupt file is an error naming the
// tensor, never wrong text), then (check_checksums) that its files have the CRC-32Cs recorded
// when they were written (config.json "trident_checksums", or a QLoRA step directory's
// trident.json: ckpt/checksums.h), so a flipped code byte, which no range check sees, is refused.
QuantizedModel load_quantized(const std::string& dir, bool check_checksums = true);
// A quantized checkpoint's format and q4 group size (0 for int8), from its config.json alone.
struct PackedFormat {
  Format format;
  int group;
};
PackedFormat quantized_format(const std::string& dir);
// The model config of either kind of checkpoint, without reading its tensors.
nn::ModelConfig inference_config(const std::string& path);
// A quantized checkpoint, or an fp32 one (any directory `generate` reads) kept fp32.
QuantizedModel load_for_inference(const std::string& path);
// `ckpt info` for a quantized checkpoint: format, tensors, bytes; load_quantized verifies.
std::string describe_quantized(const std::string& dir);

}  // namespace trident::quant
