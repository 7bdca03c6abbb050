// GPTQ over a whole model (quant/gptq.h quantizes one matrix): the calibration inputs of every
// layer matrix are captured by running the model over windows of a token shard, layer by layer
// and sequentially, as in the paper: layer l's inputs come from layers 0..l-1 already quantized
// (with the kernels inference will use), so each layer compensates what the earlier layers'
// rounding did to its inputs. Per layer: the windows' residual streams run through layer l in
// fp32 while the linears' inputs are accumulated into each matrix's H = 2 X^T X; every matrix of
// the layer is then GPTQ-quantized (they all see fp32 inputs from within the layer, the paper's
// default; not "true-sequential"), and the windows are run through the quantized layer to give
// layer l + 1 its inputs. The embeddings, norms, biases and head stay fp32 as in round to nearest.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "quant/gptq.h"
#include "quant/quantized_model.h"

namespace trident::infer {

// Per matrix, the quadratic errors on its calibration inputs (quant::quadratic_error):
// energy = e(0) = 2 ||X W^T||_F^2, rtn and gptq = 2 ||X W^T - X Q^T||_F^2 for either method's Q
// (both on the same X: the inputs of the sequentially quantized model).
struct GptqMatrixReport {
  std::string name;
  int64_t rows = 0, cols = 0;
  double energy = 0.0, rtn = 0.0, gptq = 0.0;
};

struct GptqResult {
  quant::QuantizedModel model;  // format, group, method kMethodGptq
  std::vector<GptqMatrixReport> matrices;
};

// fp32: an fp32 QuantizedModel (quant::load_for_inference of an fp32 checkpoint). tokens: the
// calibration windows, seq_len each, back to back (tokens.size() a positive multiple of
// seq_len). progress: one line per layer.
GptqResult gptq_quantize_model(quant::QuantizedModel fp32, const std::vector<int32_t>& tokens, int64_t seq_len,
                               quant::Format format, int group, const quant::GptqOptions& opt,
                               const std::function<void(const std::string&)>& progress);

}  // namespace trident::infer
