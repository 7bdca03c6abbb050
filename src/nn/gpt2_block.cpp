// GPT-2's block: its modules built from its declared parameters (see gpt2_block.h).
#include "nn/gpt2_block.h"

#include "nn/gpt2_layer_decls.h"
#include "nn/lora.h"
#include "nn/param_decl.h"

namespace trident::nn {

BlockShape gpt2_block_shape(const ModelConfig& cfg, int tp) {
  BlockShape s;
  s.C = cfg.n_embd;
  s.norm_bias = true;
  s.heads.NH = s.heads.NKV = cfg.n_head / tp;
  s.heads.HS = cfg.head_size();
  s.heads.kv_heads_total = cfg.n_head;
  s.activation = MlpActivation::kGelu;
  s.I = s.mlp_in = 4 * cfg.n_embd / tp;
  return s;  // c_attn and c_fc are single weights: nothing to fuse
}

std::unique_ptr<Layer> make_gpt2_block(ParameterSet& params, const ModelConfig& cfg, const TpContext& tp,
                                       int layer) {
  const Gpt2LayerDecls d = gpt2_layer_decls(cfg, layer);
  add_declared(params, d.all(), cfg, tp.rank, tp.size);
  add_lora(params, cfg, layer, tp.rank, tp.size);  // after the base: the block's fused runs stay adjacent
  const LoraContext lora{.scale = cfg.lora.scale(), .tp = tp};
  const BlockShape shape = gpt2_block_shape(cfg, tp.size);
  Attention attn(params, tp, shape.heads,
                 ColumnParallelLinear(params, {&d.c_attn_weight}, &d.c_attn_bias, &lora),
                 RowParallelLinear(params, d.attn_c_proj_weight, &d.attn_c_proj_bias, &lora));
  Mlp mlp(tp, MlpActivation::kGelu, ColumnParallelLinear(params, {&d.c_fc_weight}, &d.c_fc_bias, &lora),
          RowParallelLinear(params, d.mlp_c_proj_weight, &d.mlp_c_proj_bias, &lora));
  // LayerNorm's eps is the kernel's 1e-5 (GPT-2's layer_norm_epsilon).
  return std::make_unique<TransformerBlock>(cfg, tp, shape, Norm(params, d.ln_1_weight, &d.ln_1_bias, 1e-5f),
                                            std::move(attn), Norm(params, d.ln_2_weight, &d.ln_2_bias, 1e-5f),
                                            std::move(mlp));
}

}  // namespace trident::nn
