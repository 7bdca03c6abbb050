// The Llama-block decoder layer for cached inference, the arithmetic of nn/llama_block.cpp's
// forward: rmsnorm, q/k/v projections, rotary at the rows' absolute positions, grouped-query
// attention over the cache, o_proj; rmsnorm, then the MLP: Llama's SwiGLU, or in a Mixtral MoE
// layer the router (nn::route_token, as training routes), the chosen experts' SwiGLUs weighted
// and summed per token in ascending expert id (training's order), plus the shared experts.
// Inference is dropless: a capacity factor is a training-time rule over whole sequences, which
// token-by-token generation cannot apply (docs/moe.md).
#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "infer/decode_layer.h"
#include "kernels/kernels.h"
#include "nn/moe_router.h"

namespace trident::infer {
namespace {

// A SwiGLU MLP of width I: down(silu(gate x) * up x).
struct SwiGlu {
  const quant::QuantMatrix *gate = nullptr, *up = nullptr, *down = nullptr;
  int64_t I = 0;
  bool defined() const { return gate != nullptr; }
  // out (n, C) = the MLP of x (n, C); h (2 n I floats) is scratch.
  void forward(float* out, const float* x, int64_t n, float* h, quant::LinearScratch& s) const {
    float* g = h;
    float* u = h + n * I;
    quant::quant_linear(g, x, *gate, nullptr, n, s);
    quant::quant_linear(u, x, *up, nullptr, n, s);
    kernels::swiglu_forward(g, g, u, n * I);
    quant::quant_linear(out, g, *down, nullptr, n, s);
  }
};

class LlamaDecodeLayer final : public DecodeLayer {
 public:
  LlamaDecodeLayer(const quant::QuantizedModel& m, int layer, int64_t max_positions) : cfg_(m.config) {
    const std::string p = fmt::format("model.layers.{}.", layer);
    n1_ = m.tensor(p + "input_layernorm.weight").data();
    n2_ = m.tensor(p + "post_attention_layernorm.weight").data();
    q_ = &m.matrix(p + "self_attn.q_proj.weight");
    k_ = &m.matrix(p + "self_attn.k_proj.weight");
    v_ = &m.matrix(p + "self_attn.v_proj.weight");
    o_ = &m.matrix(p + "self_attn.o_proj.weight");
    auto swiglu = [&](const std::string& prefix, const char* g, const char* u, const char* d, int64_t I) {
      return SwiGlu{&m.matrix(prefix + g), &m.matrix(prefix + u), &m.matrix(prefix + d), I};
    };
    if (!cfg_.layer_is_moe(layer)) {
      dense_ = swiglu(p + "mlp.", "gate_proj.weight", "up_proj.weight", "down_proj.weight", cfg_.mlp_width());
    } else {
      const std::string b = p + "block_sparse_moe.";
      router_ = m.tensor(b + "gate.weight").data();
      if (cfg_.has_router_bias()) bias_ = m.tensor(nn::router_bias_name(layer)).data();
      for (int e = 0; e < cfg_.n_experts; ++e) {
        const std::string x = fmt::format("{}experts.{}.", b, e);
        experts_.push_back(swiglu(x, "w1.weight", "w3.weight", "w2.weight", cfg_.expert_width()));
      }
      if (cfg_.n_shared_experts > 0) {
        shared_ = swiglu(b + "shared_experts.", "gate_proj.weight", "up_proj.weight", "down_proj.weight",
                         cfg_.shared_expert_width());
      }
    }
    const int64_t KV = static_cast<int64_t>(cfg_.kv_heads()) * cfg_.head_size();
    kc_.assign(static_cast<std::size_t>(max_positions * KV), 0.0f);
    vc_.assign(kc_.size(), 0.0f);
  }

  void forward(float* x, int64_t pos, int64_t n, DecodeScratch& s) override {
    namespace k = kernels;
    const int64_t C = cfg_.n_embd, HS = cfg_.head_size(), NH = cfg_.n_head, NKV = cfg_.kv_heads();
    const int64_t Q = NH * HS, KV = NKV * HS;
    const int64_t widest = std::max({static_cast<int64_t>(cfg_.mlp_width()), static_cast<int64_t>(cfg_.expert_width()), shared_.I, KV});
    const auto eps = static_cast<float>(cfg_.norm_eps);
    const auto theta = static_cast<float>(cfg_.rope_theta);
    float* nrm = s.get(0, n * C);
    float* rstd = s.get(1, n);
    float* q = s.get(2, n * Q);
    float* att = s.get(3, n * Q);
    float* h = s.get(4, 2 * n * widest);
    k::rmsnorm_forward(nrm, rstd, x, n1_, n, C, eps);
    quant::quant_linear(q, nrm, *q_, nullptr, n, s.linear);
    float* kk = kc_.data() + pos * KV;  // keys and values straight into the cache
    float* vv = vc_.data() + pos * KV;
    quant::quant_linear(kk, nrm, *k_, nullptr, n, s.linear);
    quant::quant_linear(vv, nrm, *v_, nullptr, n, s.linear);
    k::rope_forward(q, 1, n, NH, HS, Q, theta, pos);
    k::rope_forward(kk, 1, n, NKV, HS, KV, theta, pos);
    cached_attention(att, q, Q, kc_.data(), vc_.data(), pos, n, NH, NKV, HS);
    float* tmp = q;  // (n, C) <= (n, Q) since Q = C
    quant::quant_linear(tmp, att, *o_, nullptr, n, s.linear);
    k::residual_forward(x, x, tmp, n * C);
    k::rmsnorm_forward(nrm, rstd, x, n2_, n, C, eps);
    if (dense_.defined()) {
      dense_.forward(tmp, nrm, n, h, s.linear);
    } else {
      experts_forward(tmp, nrm, n, /*rows=*/att, s.get(5, n * C), h, s.linear);
      if (shared_.defined()) {
        float* sh = att;  // free again after the experts
        shared_.forward(sh, nrm, n, h, s.linear);
        k::accumulate(tmp, sh, n * C);  // training's order: the experts' sum, then the shared
      }
    }
    k::residual_forward(x, x, tmp, n * C);
  }

 private:
  // out (n, C) = per token the sum over its K experts, ascending id, of weight x expert(x).
  // Each expert runs once on the rows that chose it, gathered into `rows` (n, C); y (n, C).
  void experts_forward(float* out, const float* x, int64_t n, float* rows, float* y, float* h,
                       quant::LinearScratch& s) {
    const int64_t C = cfg_.n_embd, E = cfg_.n_experts, K = cfg_.n_experts_per_tok;
    probs_.resize(static_cast<std::size_t>(E));
    sel_.resize(static_cast<std::size_t>(n * K));
    weights_.resize(static_cast<std::size_t>(n * K));
    for (int64_t t = 0; t < n; ++t) {
      nn::route_token(x + t * C, router_, bias_, cfg_, probs_.data(), sel_.data() + t * K, weights_.data() + t * K);
    }
    std::fill(out, out + n * C, 0.0f);
    std::vector<std::pair<int64_t, float>> chose;  // (token, weight) of the rows routed to e
    for (int64_t e = 0; e < E; ++e) {
      chose.clear();
      for (int64_t i = 0; i < n * K; ++i) {
        if (sel_[static_cast<std::size_t>(i)] == e) chose.emplace_back(i / K, weights_[static_cast<std::size_t>(i)]);
      }
      if (chose.empty()) continue;
      const auto r = static_cast<int64_t>(chose.size());
      for (int64_t j = 0; j < r; ++j) std::memcpy(rows + j * C, x + chose[j].first * C, sizeof(float) * C);
      experts_[static_cast<std::size_t>(e)].forward(y, rows, r, h, s);
      for (int64_t j = 0; j < r; ++j) {
        float* o = out + chose[j].first * C;
        const float w = chose[j].second;
        for (int64_t c = 0; c < C; ++c) o[c] += w * y[j * C + c];
      }
    }
  }

  nn::ModelConfig cfg_;
  const float *n1_, *n2_;
  const quant::QuantMatrix *q_, *k_, *v_, *o_;
  SwiGlu dense_;                 // Llama's MLP, or a first_k_dense layer's
  const float* router_ = nullptr;  // (E, C) fp32, MoE layers
  const float* bias_ = nullptr;    // (E) the aux-free selection bias, when trained with one
  std::vector<SwiGlu> experts_;
  SwiGlu shared_;
  std::vector<float> probs_, weights_;
  std::vector<int32_t> sel_;
  std::vector<float> kc_, vc_;  // (max_positions, NKV HS) the KV cache
};

}  // namespace

std::unique_ptr<DecodeLayer> make_llama_decode_layer(const quant::QuantizedModel& m, int layer, int64_t max_positions) {
  return std::make_unique<LlamaDecodeLayer>(m, layer, max_positions);
}

}  // namespace trident::infer
