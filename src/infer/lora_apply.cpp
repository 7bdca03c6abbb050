// Unmerged LoRA at inference (see lora_apply.h).
#include "infer/lora_apply.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <vector>

#include "ckpt/base_fingerprint.h"
#include "ckpt/checkpoint.h"
#include "core/check.h"

namespace trident::infer {

LoraApplier::LoraApplier(const quant::QuantizedModel& weights, ckpt::LoadedAdapters adapters)
    : adapters_(std::move(adapters)) {
  const int64_t r = adapters_.lora.rank;
  for (const ckpt::LoadedAdapter& a : adapters_.adapters) {
    const auto it = weights.matrices.find(a.base.name);
    TRI_CHECK(it != weights.matrices.end(), "the adapter of {} ({}) has no layer matrix {} in the model to apply to",
              a.base.name, adapters_.dir, a.base.name);
    const quant::QuantMatrix& w = it->second;
    TRI_CHECK(static_cast<int64_t>(a.a.size()) == r * w.cols && static_cast<int64_t>(a.b.size()) == w.rows * r,
              "the adapter of {} ({}) is A [{}, {}], B [{}, {}] for a {} x {} matrix ([out, in]): another model's",
              a.base.name, adapters_.dir, r, a.a.size() / static_cast<std::size_t>(r), a.b.size() / static_cast<std::size_t>(r),
              r, w.rows, w.cols);
    by_matrix_[&w] = &a;
  }
}

void LoraApplier::add(const quant::QuantMatrix& w, const float* x, float* out, int64_t N) const {
  const auto it = by_matrix_.find(&w);
  if (it == by_matrix_.end()) return;
  const ckpt::LoadedAdapter& ad = *it->second;
  const int64_t I = w.cols, O = w.rows, r = adapters_.lora.rank;
  const double s = adapters_.lora.alpha / static_cast<double>(r);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    std::vector<double> v(static_cast<std::size_t>(r), 0.0);  // s x A^T, this row
    const float* xr = x + n * I;
    for (int64_t k = 0; k < r; ++k) {
      const float* ar = ad.a.data() + k * I;
      double d = 0.0;
      for (int64_t i = 0; i < I; ++i) d += static_cast<double>(xr[i]) * ar[i];
      v[static_cast<std::size_t>(k)] = s * d;
    }
    float* yr = out + n * O;
    for (int64_t o = 0; o < O; ++o) {
      const float* br = ad.b.data() + o * r;
      double d = 0.0;
      for (int64_t k = 0; k < r; ++k) d += v[static_cast<std::size_t>(k)] * br[k];
      yr[o] = static_cast<float>(yr[o] + d);
    }
  }
}

std::optional<ckpt::LoadedAdapters> adapters_for(const std::string& ckpt_path, const std::string& adapter,
                                                 const nn::ModelConfig& base, bool allow_other_base) {
  const std::string dir = ckpt::resolve_checkpoint(ckpt_path);
  const bool own = ckpt::holds_adapters(dir);
  nn::ModelConfig shape = base;
  shape.lora = {};
  if (!adapter.empty()) {
    TRI_CHECK(!own, "--ckpt {} is a LoRA run's step directory, which holds its own adapters; give its base as "
              "--ckpt to apply --adapter {}, or drop --adapter to apply the step directory's", dir, adapter);
    ckpt::LoadedAdapters loaded = ckpt::read_adapters(shape, adapter, ckpt_path);
    loaded.base_note = ckpt::check_adapter_base(loaded.dir, ckpt_path, "--ckpt", allow_other_base);
    return loaded;
  }
  if (!own) return std::nullopt;
  return ckpt::read_adapters(shape, dir, ckpt_path);
}

std::string apply_adapters(DecodeModel& model, ckpt::LoadedAdapters adapters) {
  auto applier = std::make_shared<LoraApplier>(model.weights(), std::move(adapters));
  const ckpt::LoadedAdapters& a = applier->adapters();
  std::string line = fmt::format("lora: {} adapters of {} applied unmerged (r {}, alpha {:g}, {})", a.adapters.size(),
                                 a.dir, a.lora.rank, a.lora.alpha, fmt::join(a.lora.targets, ","));
  if (!a.base_note.empty()) line += "\n" + a.base_note;
  model.set_linear_addend([applier](const quant::QuantMatrix& w, const float* x, float* out, int64_t N) {
    applier->add(w, x, out, N);
  });
  return line;
}

}  // namespace trident::infer
