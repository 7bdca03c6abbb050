// LoRA adapters applied at inference without merging them into the base (docs/lora.md): every
// adapted layer matrix's product gets s (x A^T) B^T added after it, s = alpha / r, through
// quant::LinearScratch::add_after, keyed by the matrix the decode layer multiplies, so the base
// stays as loaded (fp32, or packed: a QLoRA step directory's q4/int8 base) and one base can be
// evaluated under several adapters. The adapter term is summed in double and rounded once into
// the product, so the unmerged model differs from merge-lora's (W' = fl(W + s B A)) only by the
// merged weights' rounding and the kernels' rounding of two different products.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <unordered_map>

#include "ckpt/lora_adapters.h"
#include "infer/decode_model.h"

namespace trident::infer {

class LoraApplier {
 public:
  // Throws naming the weight when `weights` lacks an adapted matrix or its shape is not the adapter's.
  LoraApplier(const quant::QuantizedModel& weights, ckpt::LoadedAdapters adapters);
  // out (N, O) += s (x A^T) B^T when `w` is adapted; nothing otherwise.
  void add(const quant::QuantMatrix& w, const float* x, float* out, int64_t N) const;
  const ckpt::LoadedAdapters& adapters() const { return adapters_; }

 private:
  ckpt::LoadedAdapters adapters_;
  std::unordered_map<const quant::QuantMatrix*, const ckpt::LoadedAdapter*> by_matrix_;
};

// What `trident eval` / `generate` apply on --ckpt CKPT: the adapters of --adapter DIR (a LoRA or
// QLoRA run's checkpoint) checked against CKPT's model, or, without --adapter, those CKPT holds
// itself (a LoRA or QLoRA step directory: its base plus its adapters); nullopt when neither.
// Throws when CKPT holds adapters and --adapter is given too (which base is meant is unclear), and
// when --adapter's run recorded another base than CKPT (ckpt::check_adapter_base) unless
// `allow_other_base` (--allow-other-base).
std::optional<ckpt::LoadedAdapters> adapters_for(const std::string& ckpt, const std::string& adapter,
                                                 const nn::ModelConfig& base, bool allow_other_base);
// Makes `model` apply `adapters` (kept alive by the model's hook); returns a one-line summary (and the
// base check's note on a second line, when it has one).
std::string apply_adapters(DecodeModel& model, ckpt::LoadedAdapters adapters);

}  // namespace trident::infer
