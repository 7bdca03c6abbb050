// GPT-2's block for cached inference: x += c_proj(attn(c_attn(ln_1(x)))); x += mlp(ln_2(x)),
// the same arithmetic as nn/gpt2_block.cpp's forward, one sequence, new rows only.
#include <fmt/format.h>

#include <cstring>

#include "infer/decode_layer.h"
#include "kernels/kernels.h"

namespace trident::infer {
namespace {

class Gpt2DecodeLayer final : public DecodeLayer {
 public:
  Gpt2DecodeLayer(const quant::QuantizedModel& m, int layer, int64_t max_positions) : cfg_(m.config) {
    const std::string p = fmt::format("h.{}.", layer);
    ln1_w_ = m.tensor(p + "ln_1.weight").data(), ln1_b_ = m.tensor(p + "ln_1.bias").data();
    attn_ = &m.matrix(p + "attn.c_attn.weight"), attn_b_ = m.tensor(p + "attn.c_attn.bias").data();
    proj_ = &m.matrix(p + "attn.c_proj.weight"), proj_b_ = m.tensor(p + "attn.c_proj.bias").data();
    ln2_w_ = m.tensor(p + "ln_2.weight").data(), ln2_b_ = m.tensor(p + "ln_2.bias").data();
    fc_ = &m.matrix(p + "mlp.c_fc.weight"), fc_b_ = m.tensor(p + "mlp.c_fc.bias").data();
    fcproj_ = &m.matrix(p + "mlp.c_proj.weight"), fcproj_b_ = m.tensor(p + "mlp.c_proj.bias").data();
    k_.assign(static_cast<std::size_t>(max_positions * cfg_.n_embd), 0.0f);
    v_.assign(k_.size(), 0.0f);
  }

  void forward(float* x, int64_t pos, int64_t n, DecodeScratch& s) override {
    namespace k = kernels;
    const int64_t C = cfg_.n_embd, H = 4 * C;
    float* ln = s.get(0, n * C);
    float* mean = s.get(1, 2 * n);
    float* qkv = s.get(2, n * 3 * C);
    float* att = s.get(3, n * C);
    float* tmp = s.get(4, n * C);
    float* fch = s.get(5, n * H);
    k::layernorm_forward(ln, mean, mean + n, x, ln1_w_, ln1_b_, n, C);
    quant::quant_linear(qkv, ln, *attn_, attn_b_, n, s.linear);
    for (int64_t t = 0; t < n; ++t) {  // [q | k | v] rows: keys and values into the cache
      std::memcpy(k_.data() + (pos + t) * C, qkv + t * 3 * C + C, static_cast<std::size_t>(C) * sizeof(float));
      std::memcpy(v_.data() + (pos + t) * C, qkv + t * 3 * C + 2 * C, static_cast<std::size_t>(C) * sizeof(float));
    }
    cached_attention(att, qkv, 3 * C, k_.data(), v_.data(), pos, n, cfg_.n_head, cfg_.n_head, cfg_.head_size());
    quant::quant_linear(tmp, att, *proj_, proj_b_, n, s.linear);
    k::residual_forward(x, x, tmp, n * C);
    k::layernorm_forward(ln, mean, mean + n, x, ln2_w_, ln2_b_, n, C);
    quant::quant_linear(fch, ln, *fc_, fc_b_, n, s.linear);
    k::gelu_forward(fch, fch, n * H);
    quant::quant_linear(tmp, fch, *fcproj_, fcproj_b_, n, s.linear);
    k::residual_forward(x, x, tmp, n * C);
  }

 private:
  nn::ModelConfig cfg_;
  const float *ln1_w_, *ln1_b_, *attn_b_, *proj_b_, *ln2_w_, *ln2_b_, *fc_b_, *fcproj_b_;
  const quant::QuantMatrix *attn_, *proj_, *fc_, *fcproj_;
  std::vector<float> k_, v_;  // (max_positions, C) the KV cache
};

}  // namespace

std::unique_ptr<DecodeLayer> make_gpt2_decode_layer(const quant::QuantizedModel& m, int layer, int64_t max_positions) {
  return std::make_unique<Gpt2DecodeLayer>(m, layer, max_positions);
}

}  // namespace trident::infer
