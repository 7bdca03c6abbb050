// Cached inference over a declared family (see decode_model.h).
#include "infer/decode_model.h"

#include <algorithm>

#include "core/check.h"
#include "kernels/kernels.h"
#include "nn/architecture.h"

namespace trident::infer {

void require_decode_layer(nn::Family family) {
  // Every family has one today (Mixtral's is the Llama block's with the experts as its MLP);
  // a new family fails here, before any weights are read, until it declares its own.
  TRI_CHECK(family == nn::Family::kGpt2 || family == nn::Family::kLlama || family == nn::Family::kMixtral,
            "generate, eval and quantize do not support the {} family yet (no cached decode layer); train and "
            "checkpoint it, and evaluate with `trident train --eval-every`", nn::family_name(family));
}

std::unique_ptr<DecodeLayer> make_decode_layer(const quant::QuantizedModel& m, int layer, int64_t max_positions) {
  require_decode_layer(m.config.family);
  switch (m.config.family) {
    case nn::Family::kGpt2: return make_gpt2_decode_layer(m, layer, max_positions);
    case nn::Family::kLlama:
    case nn::Family::kMixtral: return make_llama_decode_layer(m, layer, max_positions);
  }
  TRI_FAIL("no decode layer for family {}", nn::family_name(m.config.family));
}

DecodeModel::DecodeModel(quant::QuantizedModel weights, int64_t max_positions)
    : w_(std::move(weights)), max_positions_(max_positions > 0 ? max_positions : w_.config.n_positions) {
  const nn::ModelConfig& c = w_.config;
  TRI_CHECK(max_positions_ <= c.n_positions, "a cache of {} positions exceeds the model's n_positions {}",
            max_positions_, c.n_positions);
  const nn::Architecture& arch = nn::architecture(c.family);
  auto by_role = [&](const std::vector<nn::ParamDecl>& decls, nn::ParamRole role) -> const float* {
    for (const nn::ParamDecl& d : decls) {
      if (d.role == role) return w_.tensor(d.name).data();
    }
    return nullptr;
  };
  wte_ = by_role(arch.embedding_params(c), nn::ParamRole::kTokenEmbedding);
  wpe_ = by_role(arch.embedding_params(c), nn::ParamRole::kPositionEmbedding);
  const auto head = arch.head_params(c);
  lnf_w_ = by_role(head, nn::ParamRole::kFinalNormWeight);
  lnf_b_ = by_role(head, nn::ParamRole::kFinalNormBias);
  head_ = c.tie_word_embeddings ? wte_ : by_role(head, nn::ParamRole::kLmHead);
  TRI_CHECK(wte_ != nullptr && lnf_w_ != nullptr && head_ != nullptr, "{}: the declaration lacks an embedding, "
            "final norm or LM head", c.describe());
  for (int l = 0; l < c.n_layer; ++l) layers_.push_back(make_decode_layer(w_, l, max_positions_));
}

const float* DecodeModel::forward(const int32_t* ids, int64_t n, bool all_logits) {
  const nn::ModelConfig& c = w_.config;
  const int64_t C = c.n_embd, V = c.vocab_size;
  TRI_CHECK(n > 0 && pos_ + n <= max_positions_, "{} more tokens after {} exceed the cache of {} positions",
            n, pos_, max_positions_);
  for (int64_t t = 0; t < n; ++t) {
    TRI_CHECK(ids[t] >= 0 && ids[t] < V, "token id {} is outside the vocabulary of {}", ids[t], V);
  }
  x_.resize(static_cast<std::size_t>(n * C));
  embed_at(ids, n, pos_, x_.data());
  for (auto& layer : layers_) layer->forward(x_.data(), pos_, n, scratch_);
  pos_ += n;
  const int64_t rows = all_logits ? n : 1;
  const float* last = x_.data() + (n - rows) * C;
  normed_.resize(static_cast<std::size_t>(rows * C));
  stats_.resize(static_cast<std::size_t>(2 * rows));
  if (lnf_b_ != nullptr) {
    kernels::layernorm_forward(normed_.data(), stats_.data(), stats_.data() + rows, last, lnf_w_, lnf_b_, rows, C);
  } else {
    kernels::rmsnorm_forward(normed_.data(), stats_.data(), last, lnf_w_, rows, C, static_cast<float>(c.norm_eps));
  }
  logits_.resize(static_cast<std::size_t>(rows * V));
  kernels::matmul_forward_nt(logits_.data(), normed_.data(), head_, rows, C, V);
  return logits_.data();
}

void DecodeModel::embed_at(const int32_t* ids, int64_t n, int64_t pos, float* x) const {
  const int64_t C = w_.config.n_embd;
  kernels::embedding_forward(x, ids, wte_, n, C, 0, w_.config.vocab_size);
  if (wpe_ != nullptr) {
    for (int64_t t = 0; t < n; ++t) kernels::residual_forward(x + t * C, x + t * C, wpe_ + (pos + t) * C, C);
  }
}

void DecodeModel::embed(const int32_t* ids, int64_t n, float* x) const {
  TRI_CHECK(n > 0 && n <= max_positions_, "a window of {} tokens exceeds the cache of {} positions", n, max_positions_);
  for (int64_t t = 0; t < n; ++t) {
    TRI_CHECK(ids[t] >= 0 && ids[t] < w_.config.vocab_size, "token id {} is outside the vocabulary of {}", ids[t],
              w_.config.vocab_size);
  }
  embed_at(ids, n, 0, x);
}

void DecodeModel::run_layer(int layer, float* x, int64_t n) {
  TRI_CHECK(layer >= 0 && layer < static_cast<int>(layers_.size()) && n > 0 && n <= max_positions_,
            "run_layer({}, n {}): the model has {} layers and a cache of {}", layer, n, layers_.size(), max_positions_);
  layers_[static_cast<std::size_t>(layer)]->forward(x, 0, n, scratch_);
}

int64_t DecodeModel::weight_bytes_per_token() const {
  const nn::ModelConfig& c = w_.config;
  int64_t bytes = w_.matrix_bytes() + w_.tensor_bytes();
  // An embedding table is read one row per token; the tied one is read whole as the head.
  for (const nn::ParamDecl& d : nn::architecture(c.family).embedding_params(c)) {
    if (!d.tied) bytes -= (shape_numel(d.shape) - c.n_embd) * 4;
  }
  return bytes;
}

}  // namespace trident::infer
