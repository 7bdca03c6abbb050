// Sequential GPTQ calibration over a model (see gptq_calibrate.h).
#include "infer/gptq_calibrate.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "core/check.h"
#include "core/timer.h"
#include "infer/decode_model.h"
#include "nn/architecture.h"

namespace trident::infer {

GptqResult gptq_quantize_model(quant::QuantizedModel fp32, const std::vector<int32_t>& tokens, int64_t seq_len,
                               quant::Format format, int group, const quant::GptqOptions& opt,
                               const std::function<void(const std::string&)>& progress) {
  TRI_CHECK(fp32.format == quant::Format::kFp32, "GPTQ starts from an fp32 model, not a {} one",
            quant::format_name(fp32.format));
  TRI_CHECK(seq_len > 0 && !tokens.empty() && tokens.size() % static_cast<std::size_t>(seq_len) == 0,
            "GPTQ calibration needs whole windows: {} tokens in windows of {}", tokens.size(), seq_len);
  const nn::ModelConfig cfg = fp32.config;
  const int64_t C = cfg.n_embd, T = seq_len, windows = static_cast<int64_t>(tokens.size()) / T;
  DecodeModel model(std::move(fp32), T);
  std::vector<float> x(static_cast<std::size_t>(windows * T * C)), tmp(static_cast<std::size_t>(T * C));
  for (int64_t w = 0; w < windows; ++w) model.embed(tokens.data() + w * T, T, x.data() + w * T * C);
  const nn::Architecture& arch = nn::architecture(cfg.family);
  GptqResult result;
  Stopwatch total;
  for (int l = 0; l < cfg.n_layer; ++l) {
    Stopwatch timer;
    std::map<const quant::QuantMatrix*, quant::Hessian> hessians;
    std::vector<std::string> names;
    for (const nn::ParamDecl& d : arch.layer_params(cfg, l)) {
      if (!quant::is_quantizable(d, cfg)) continue;
      const quant::QuantMatrix& m = model.weights().matrix(d.name);
      hessians.emplace(&m, quant::Hessian(m.cols));
      names.push_back(d.name);
    }
    model.set_linear_observer([&](const quant::QuantMatrix& m, const float* in, int64_t n) {
      const auto it = hessians.find(&m);
      if (it != hessians.end()) it->second.add(in, n);
    });
    for (int64_t w = 0; w < windows; ++w) {  // capture: layer l on a copy of its (quantized-model) inputs
      std::copy_n(x.data() + w * T * C, T * C, tmp.data());
      model.run_layer(l, tmp.data(), T);
    }
    model.set_linear_observer(nullptr);
    const double capture_s = timer.seconds();
    for (const std::string& name : names) {
      quant::QuantMatrix& slot = model.mutable_weights().matrices.at(name);
      const quant::Hessian& hs = hessians.at(&slot);
      TRI_CHECK(hs.rows_seen() == windows * T, "GPTQ: '{}' saw {} calibration rows, expected {}", name, hs.rows_seen(),
                windows * T);
      const std::vector<float> w = slot.fp32;  // [out, in]
      GptqMatrixReport r{name, slot.rows, slot.cols};
      quant::QuantMatrix q;
      try {
        q = quant::gptq_quantize(w.data(), slot.rows, slot.cols, format, group, hs.h(), opt);
      } catch (const Error& e) {
        TRI_FAIL("cannot quantize '{}' ({} x {} as [out, in]) with GPTQ: {}", name, slot.rows, slot.cols, e.what());
      }
      const quant::QuantMatrix rtn = quant::quantize(w.data(), slot.rows, slot.cols, format, group);
      r.energy = quant::quadratic_error(w.data(), nullptr, slot.rows, slot.cols, hs.h());
      r.rtn = quant::quadratic_error(w.data(), &rtn, slot.rows, slot.cols, hs.h());
      r.gptq = quant::quadratic_error(w.data(), &q, slot.rows, slot.cols, hs.h());
      result.matrices.push_back(r);
      slot = std::move(q);  // the layer reads it through the same map node from now on
    }
    for (int64_t w = 0; w < windows; ++w) model.run_layer(l, x.data() + w * T * C, T);  // next layer's inputs
    double rtn = 0.0, gptq = 0.0;
    for (std::size_t k = result.matrices.size() - names.size(); k < result.matrices.size(); ++k) {
      const double e = std::max(result.matrices[k].energy, 1e-300);  // an all-zero output: no relative error
      rtn += std::sqrt(result.matrices[k].rtn / e);
      gptq += std::sqrt(result.matrices[k].gptq / e);
    }
    if (progress) {
      progress(fmt::format("gptq: layer {}/{}: {} matrices, inputs of {} tokens captured in {:.1f} s, quantized and "
                           "re-run in {:.1f} s; mean relative output error RTN {:.5f} -> GPTQ {:.5f} ({:.1f} s so far)",
                           l + 1, cfg.n_layer, names.size(), windows * T, capture_s, timer.seconds() - capture_s,
                           rtn / static_cast<double>(names.size()), gptq / static_cast<double>(names.size()),
                           total.seconds()));
    }
  }
  result.model = model.weights();
  result.model.format = format;
  result.model.group = format == quant::Format::kQ4 ? group : 0;
  result.model.method = quant::kMethodGptq;
  return result;
}

}  // namespace trident::infer
