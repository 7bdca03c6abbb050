// Activation recomputation (--recompute): what a layer's forward keeps for its backward and
// what backward recomputes instead. Memory for compute; results are bitwise those of kNone,
// because a rerun repeats the same kernels on the same inputs and weights.
//   kNone       every layer saves everything its backward reads.
//   kSelective  the attention core (the (B, NH, T, T) softmax probabilities) is not saved; it
//               is recomputed from the saved qkv just before the layer's backward
//               (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
//               Transformer Models").
//   kFull       only each layer's input (the residual stream) is kept; the layer's whole
//               forward reruns into one working set the model's layers share, just before the
//               layer's backward (after its weights are gathered again under ZeRO-3).
#pragma once

#include <span>
#include <string_view>

namespace trident::nn {

enum class Recompute { kNone, kSelective, kFull };

// The spellings, indexed by the enum's value: none, selective, full.
std::span<const std::string_view> recompute_names();
std::string_view recompute_name(Recompute r);
// Throws naming the accepted values.
Recompute parse_recompute(std::string_view name);

}  // namespace trident::nn
