// Llama's (and Mixtral's) block: its modules built from its declared parameters (see llama_block.h).
#include "nn/llama_block.h"

#include <algorithm>

#include "nn/architecture.h"
#include "nn/llama_layer_decls.h"
#include "nn/lora.h"
#include "nn/mixtral_layer_decls.h"
#include "nn/moe_mlp.h"
#include "nn/param_decl.h"

namespace trident::nn {

BlockShape llama_block_shape(const ModelConfig& cfg, int tp, int layer) {
  BlockShape s;
  s.C = cfg.n_embd;
  s.norm_bias = false;
  const int64_t nkv = cfg.kv_heads();
  s.kv_replicated = tp > 1 && nkv % tp != 0;
  s.heads.NH = cfg.n_head / tp;
  s.heads.NKV = s.kv_replicated ? 1 : nkv / tp;  // a replicated rank holds one head
  s.heads.HS = cfg.head_size();
  s.heads.kv_heads_total = nkv;
  s.heads.rope_theta = cfg.rope_theta;
  s.qkv_widest = std::max(s.heads.Q(), s.heads.KV());
  s.moe = cfg.layer_is_moe(layer);
  s.shared_experts = s.moe && cfg.n_shared_experts > 0;
  s.activation = MlpActivation::kSwiGlu;
  if (!s.moe || s.shared_experts) {  // the dense SwiGLU's widths: the layer's or the shared experts'
    s.I = (s.moe ? cfg.shared_expert_width() : cfg.mlp_width()) / tp;
    s.mlp_in = 2 * s.I;
    s.mlp_widest = s.I;
  }
  return s;
}

std::unique_ptr<Layer> make_llama_block(ParameterSet& params, const ModelConfig& cfg, const TpContext& tp,
                                        int layer) {
  // Mixtral declares Llama's attention and norms plus its experts: register what the family
  // declares, build the modules from Llama's named declarations.
  // With expert parallelism only this rank's experts are registered (nn/expert_parallel.h).
  add_declared(params, local_experts(architecture(cfg.family).layer_params(cfg, layer), tp.ep.rank, tp.ep.size, cfg.n_experts),
               cfg, tp.rank, tp.size);
  add_lora(params, cfg, layer, tp.rank, tp.size);  // after the base: the fused runs stay adjacent
  const LoraContext lora{.scale = cfg.lora.scale(), .tp = tp};
  const LlamaLayerDecls d = llama_layer_decls(cfg, layer);
  const BlockShape shape = llama_block_shape(cfg, tp.size, layer);
  const auto eps = static_cast<float>(cfg.norm_eps);
  Attention attn(params, tp, shape.heads,
                 ColumnParallelLinear(params, {&d.q_proj, &d.k_proj, &d.v_proj}, nullptr, &lora),
                 RowParallelLinear(params, d.o_proj, nullptr, &lora));
  auto swiglu = [&](const ParamDecl& gate, const ParamDecl& up, const ParamDecl& down) {
    return Mlp(tp, MlpActivation::kSwiGlu, ColumnParallelLinear(params, {&gate, &up}, nullptr, &lora),
               RowParallelLinear(params, down, nullptr, &lora));
  };
  std::unique_ptr<Mlp> shared;
  if (const std::optional<SharedExpertDecls> sh = shared_expert_decls(cfg, layer)) {
    shared = std::make_unique<Mlp>(swiglu(sh->gate_proj, sh->up_proj, sh->down_proj));
  }
  Mlp mlp = cfg.layer_is_moe(layer)
                ? Mlp(tp, std::make_unique<MoeMlp>(params, cfg, tp, layer), cfg.n_embd, std::move(shared))
                : swiglu(d.gate_proj, d.up_proj, d.down_proj);
  return std::make_unique<TransformerBlock>(cfg, tp, shape, Norm(params, d.input_norm, nullptr, eps),
                                            std::move(attn), Norm(params, d.post_attention_norm, nullptr, eps),
                                            std::move(mlp));
}

}  // namespace trident::nn
