// Llama's decoder layer for cached inference, the arithmetic of nn/llama_block.cpp's forward:
// rmsnorm, q/k/v projections, rotary at the rows' absolute positions, grouped-query attention
// over the cache, o_proj; rmsnorm, SwiGLU MLP.
#include <fmt/format.h>

#include <cstring>

#include "infer/decode_layer.h"
#include "kernels/kernels.h"

namespace trident::infer {
namespace {

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
    gate_ = &m.matrix(p + "mlp.gate_proj.weight");
    up_ = &m.matrix(p + "mlp.up_proj.weight");
    down_ = &m.matrix(p + "mlp.down_proj.weight");
    const int64_t KV = static_cast<int64_t>(cfg_.kv_heads()) * cfg_.head_size();
    kc_.assign(static_cast<std::size_t>(max_positions * KV), 0.0f);
    vc_.assign(kc_.size(), 0.0f);
  }

  void forward(float* x, int64_t pos, int64_t n, DecodeScratch& s) override {
    namespace k = kernels;
    const int64_t C = cfg_.n_embd, HS = cfg_.head_size(), NH = cfg_.n_head, NKV = cfg_.kv_heads();
    const int64_t Q = NH * HS, KV = NKV * HS, I = cfg_.mlp_width();
    const auto eps = static_cast<float>(cfg_.norm_eps);
    const auto theta = static_cast<float>(cfg_.rope_theta);
    float* nrm = s.get(0, n * C);
    float* rstd = s.get(1, n);
    float* q = s.get(2, n * Q);
    float* att = s.get(3, n * Q);
    float* gate = s.get(4, 2 * n * std::max(I, KV));
    float* up = gate + n * std::max(I, KV);
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
    quant::quant_linear(gate, nrm, *gate_, nullptr, n, s.linear);
    quant::quant_linear(up, nrm, *up_, nullptr, n, s.linear);
    k::swiglu_forward(gate, gate, up, n * I);
    quant::quant_linear(tmp, gate, *down_, nullptr, n, s.linear);
    k::residual_forward(x, x, tmp, n * C);
  }

 private:
  nn::ModelConfig cfg_;
  const float *n1_, *n2_;
  const quant::QuantMatrix *q_, *k_, *v_, *o_, *gate_, *up_, *down_;
  std::vector<float> kc_, vc_;  // (max_positions, NKV HS) the KV cache
};

}  // namespace

std::unique_ptr<DecodeLayer> make_llama_decode_layer(const quant::QuantizedModel& m, int layer, int64_t max_positions) {
  return std::make_unique<LlamaDecodeLayer>(m, layer, max_positions);
}

}  // namespace trident::infer
