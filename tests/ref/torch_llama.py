"""Llama written directly in PyTorch the way Hugging Face's LlamaForCausalLM computes it
(transformers/models/llama/modeling_llama.py, eager attention, no rope_scaling): the numerical
reference for Trident's Llama tests. Weights come from a dict of tensors with Hugging Face
names, nn.Linear layout [out, in]:

  model.embed_tokens.weight                     (V, C)
  model.layers.N.input_layernorm.weight         (C,)
  model.layers.N.self_attn.q_proj.weight        (NH * HD, C)
  model.layers.N.self_attn.{k,v}_proj.weight    (NKV * HD, C)
  model.layers.N.self_attn.o_proj.weight        (C, NH * HD)
  model.layers.N.post_attention_layernorm.weight (C,)
  model.layers.N.mlp.{gate,up}_proj.weight      (I, C)
  model.layers.N.mlp.down_proj.weight           (C, I)
  model.norm.weight                             (C,)
  lm_head.weight                                (V, C), absent when tie_word_embeddings

With n_experts > 0 (Mixtral) each layer's mlp.* is a sparse mixture of experts instead
(torch_mixtral.py: block_sparse_moe.gate and experts.J.w1/w2/w3), except the first first_k_dense
layers, which keep mlp.* (DeepSeek-V3's first_k_dense_replace).

What HF does, step by step (and where it changes dtype; this reference runs every step in the
dtype of its inputs, float64 in the tests, so the only casts that matter are noted):
  x = embed_tokens[ids]
  per layer:  h = RMSNorm(x) ; x = x + o_proj(attn(h)) ; h = RMSNorm(x) ; x = x + down(silu(gate(h)) * up(h))
  logits = lm_head(RMSNorm(x))          (HF then upcasts logits with .float())
  RMSNorm(x) = w * (x * rsqrt(mean(x^2, -1) + eps))  -- HF computes the bracket in fp32 and casts
               it back to the input dtype *before* multiplying by w.
  RoPE: inv_freq = 1 / theta^(arange(0, HD, 2) / HD) (HF: in fp32), angle[t, i] = t * inv_freq[i]
        for positions t = 0..T-1 of every sequence, emb = cat(angle, angle) (the two halves share
        frequencies: "rotate-half", not GPT-J's interleaved pairs), q' = q cos + rotate_half(q) sin
        with rotate_half([a, b]) = [-b, a]; cos and sin are computed in fp32 and cast to q's dtype.
  GQA: repeat_kv expands kv head j to query heads j*g .. j*g+g-1 (g = NH / NKV, contiguous groups).
  attention: softmax((q k^T) / sqrt(HD) + causal mask) v, softmax upcast to fp32; no biases anywhere.

`Hooks` lets a test plant a plausible bug (see MUTANT_HOOKS) and require its checks to fail."""
import dataclasses
import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

import torch_mixtral


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    n_layer: int
    n_head: int
    n_kv_head: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6  # LlamaConfig's default; Llama 2/3 config.json files say 1e-5
    tie_word_embeddings: bool = False
    # Mixtral: experts per layer (0: dense Llama), experts per token, whether their weights are
    # renormalised, and the load-balancing loss's weight in the objective.
    n_experts: int = 0
    top_k: int = 2
    norm_topk_prob: bool = True
    router_aux_loss_coef: float = 0.0
    router_z_loss_coef: float = 0.0
    # Aux-free balancing bias update rate and capacity factor (torch_mixtral.py); 0: off.
    router_bias_update_rate: float = 0.0
    expert_capacity_factor: float = 0.0
    # DeepSeek-V3's first_k_dense_replace (layers [0, k) keep the dense SwiGLU) and
    # n_shared_experts (one ungated SwiGLU of S x the expert width beside the routed experts).
    first_k_dense: int = 0
    n_shared_experts: int = 0
    # moe_intermediate_size: the routed (and, times S, shared) experts' width apart from the dense
    # layers' intermediate_size (0: the same). DeepSeek-V3's router (torch_mixtral.py): sigmoid
    # scores, routed_scaling_factor, group-limited routing (n_group groups, topk_group eligible).
    moe_intermediate_size: int = 0
    scoring_func: str = "softmax"
    routed_scaling_factor: float = 1.0
    n_group: int = 1
    topk_group: int = 1

    def moe_layers(self):
        return self.n_layer - self.first_k_dense if self.n_experts else 0

    def __post_init__(self):
        if self.n_head % self.n_kv_head != 0:
            raise ValueError(f"n_head {self.n_head} is not a multiple of n_kv_head {self.n_kv_head}")

    @staticmethod
    def from_meta(meta):
        """From a dump's meta.json (keys as tests/tools/gpt_reference_dump writes them)."""
        return LlamaConfig(n_layer=meta["n_layer"], n_head=meta["n_head"], n_kv_head=meta["n_kv_head"],
                           rope_theta=float(meta["rope_theta"]), rms_norm_eps=float(meta["rms_norm_eps"]),
                           tie_word_embeddings=bool(meta["tie_word_embeddings"]),
                           n_experts=int(meta.get("n_experts", 0)), top_k=int(meta.get("top_k", 2)),
                           norm_topk_prob=bool(meta.get("norm_topk_prob", True)),
                           router_aux_loss_coef=float(meta.get("router_aux_loss_coef", 0.0)),
                           router_z_loss_coef=float(meta.get("router_z_loss_coef", 0.0)),
                           router_bias_update_rate=float(meta.get("router_bias_update_rate", 0.0)),
                           expert_capacity_factor=float(meta.get("expert_capacity_factor", 0.0)),
                           first_k_dense=int(meta.get("first_k_dense", 0)),
                           n_shared_experts=int(meta.get("n_shared_experts", 0)),
                           moe_intermediate_size=int(meta.get("moe_intermediate_size", 0)),
                           scoring_func=str(meta.get("scoring_func", "softmax")),
                           routed_scaling_factor=float(meta.get("routed_scaling_factor", 1.0)),
                           n_group=int(meta.get("n_group", 1)), topk_group=int(meta.get("topk_group", 1)))

    @staticmethod
    def from_hf(config):
        """From a Hugging Face config.json dict."""
        return LlamaConfig(n_layer=config["num_hidden_layers"], n_head=config["num_attention_heads"],
                           n_kv_head=config.get("num_key_value_heads", config["num_attention_heads"]),
                           rope_theta=float(config.get("rope_theta", 10000.0)),
                           rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
                           tie_word_embeddings=bool(config.get("tie_word_embeddings", False)))


# ---------------------------------------------------------------------------------------------
# The pieces, each as HF computes it.

def rms_norm(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rope_cos_sin(seq_len, head_dim, theta, dtype):
    """cos, sin of shape (T, HD): the angle of pair i at position t is t * theta^(-2i/HD), the
    halves [0, HD/2) and [HD/2, HD) carrying the same angles (HF's emb = cat(freqs, freqs))."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=dtype) / head_dim))
    freqs = torch.outer(torch.arange(seq_len, dtype=dtype), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x, cos, sin):
    """HF's rotate-half RoPE on x (B, H, T, HD): element i pairs with element i + HD/2."""
    return x * cos + rotate_half(x) * sin


def apply_rope_interleaved(x, cos, sin):
    """GPT-J / Meta-original convention, a mutant here: element 2i pairs with 2i + 1, rotated by
    the angle of frequency i (the first half of HF's cos/sin holds each frequency once)."""
    half = x.shape[-1] // 2
    c, s = cos[..., :half], sin[..., :half]
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * c - odd * s, even * s + odd * c), dim=-1).flatten(-2)


def repeat_kv(kv, n_rep):
    """(B, NKV, T, HD) -> (B, NKV * n_rep, T, HD), kv head j serving query heads
    j*n_rep .. j*n_rep + n_rep - 1 (HF's repeat_kv, = repeat_interleave on dim 1)."""
    B, nkv, T, hd = kv.shape
    return kv[:, :, None].expand(B, nkv, n_rep, T, hd).reshape(B, nkv * n_rep, T, hd)


def repeat_kv_interleaved(kv, n_rep):
    """Mutant: query head h reads kv head h % NKV (tiling instead of contiguous groups)."""
    return kv.repeat(1, n_rep, 1, 1)


def causal_attention(q, k, v):
    T, hd = q.shape[-2], q.shape[-1]
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    return scores.masked_fill(~mask, float("-inf")).softmax(dim=-1) @ v


@dataclasses.dataclass(frozen=True)
class Hooks:
    """The replaceable parts of the forward pass (defaults: HF's)."""
    rope: Callable = apply_rope
    repeat_kv: Callable = repeat_kv
    act: Callable = F.silu
    rms_eps: Optional[float] = None  # None: cfg.rms_norm_eps
    moe_renorm: Optional[bool] = None  # None: cfg.norm_topk_prob
    aux_rule: str = "sequence"  # torch_mixtral.moe_block: "sequence" (Trident's) or "batch" (HF's)
    aux_in_objective: bool = True  # the load-balancing loss is added to the cross-entropy
    z_in_objective: bool = True    # the router z-loss is added too
    bias_rule: str = "selection"   # torch_mixtral.moe_block: "selection" (Trident's), "weights", "ignored"
    capacity_rule: str = "probs"   # "probs" (Trident's), "position" (Switch), "renormalised"
    bias_update_sign: float = 1.0  # -1: the bias update pushes towards imbalance (a mutant)
    shared_experts: bool = True    # the shared experts' output is added to the routed experts'
    aux_over_all_layers: bool = False  # the aux / z averages divide by n_layer, not the MoE layers
    groups_ignored: bool = False   # group-limited routing skipped: the top k of all experts
    routed_scaling: bool = True    # the routing weights times routed_scaling_factor
    sigmoid_aux_normalised: bool = True  # the sigmoid router's aux P_e reads s_e / sum s (else raw s_e)


HF = Hooks()

# Plausible bugs a test plants to show its checks bite (each a wrong reading of HF's code).
MUTANT_HOOKS = {
    "rope_interleaved": Hooks(rope=apply_rope_interleaved),
    "kv_heads_interleaved": Hooks(repeat_kv=repeat_kv_interleaved),  # only differs when 1 < NKV < NH
    "rms_eps_x10": None,  # built per config by mutant_hooks(): eps 10x the config's
    "gelu_for_silu": Hooks(act=lambda x: F.gelu(x, approximate="tanh")),
    # Mixtral only: the k weights left as softmax probabilities / renormalised against the
    # config, the load-balancing loss left out of the objective, HF's batch-level rule for it.
    "moe_renorm_flipped": None,  # built per config by mutant_hooks()
    "moe_aux_dropped": Hooks(aux_in_objective=False),
    "moe_aux_batch_level": Hooks(aux_rule="batch"),
    "moe_z_dropped": Hooks(z_in_objective=False),
    # Aux-free bias and capacity: the bias in the weights too / not in the selection, the
    # update's sign flipped, Switch's keep-by-position capacity, kept weights renormalised.
    "moe_bias_in_weights": Hooks(bias_rule="weights"),
    "moe_bias_ignored": Hooks(bias_rule="ignored"),
    "moe_bias_update_flipped": Hooks(bias_update_sign=-1.0),
    "moe_capacity_by_position": Hooks(capacity_rule="position"),
    "moe_capacity_renormalised": Hooks(capacity_rule="renormalised"),
    # With first_k_dense / shared experts: the shared experts left out, the auxiliary losses
    # averaged over every layer (dense ones included) instead of the MoE layers.
    "moe_shared_dropped": Hooks(shared_experts=False),
    "moe_aux_over_all_layers": Hooks(aux_over_all_layers=True),
    # DeepSeek-V3's router: the group limit skipped, routed_scaling_factor left out, the sigmoid
    # router's aux loss on raw scores instead of the normalised affinities.
    "moe_groups_ignored": Hooks(groups_ignored=True),
    "moe_scaling_dropped": Hooks(routed_scaling=False),
    "moe_sigmoid_aux_raw": Hooks(sigmoid_aux_normalised=False),
}


def mutant_hooks(name, cfg):
    if name == "rms_eps_x10":
        return Hooks(rms_eps=cfg.rms_norm_eps * 10)
    if name == "moe_renorm_flipped":
        return Hooks(moe_renorm=not cfg.norm_topk_prob)
    return MUTANT_HOOKS[name]


def mutant_applies(name, cfg):
    """Whether a mutant changes anything for this shape (a kv mapping needs 1 < NKV < NH)."""
    if name == "kv_heads_interleaved":
        return 1 < cfg.n_kv_head < cfg.n_head
    if name.startswith("moe_bias"):
        return cfg.n_experts > 0 and cfg.router_bias_update_rate > 0
    if name.startswith("moe_capacity"):
        return cfg.n_experts > 0 and cfg.expert_capacity_factor > 0
    if name.startswith("moe_"):
        if name == "moe_groups_ignored":
            return cfg.n_experts > 0 and cfg.n_group > 1
        if name == "moe_scaling_dropped":
            return cfg.n_experts > 0 and cfg.routed_scaling_factor != 1.0
        if name == "moe_sigmoid_aux_raw":
            return cfg.n_experts > 0 and cfg.scoring_func == "sigmoid" and cfg.router_aux_loss_coef > 0
        if name == "moe_z_dropped":
            return cfg.n_experts > 0 and cfg.router_z_loss_coef > 0
        if name == "moe_shared_dropped":
            return cfg.n_experts > 0 and cfg.n_shared_experts > 0
        if name == "moe_aux_over_all_layers":
            return cfg.n_experts > 0 and cfg.first_k_dense > 0 and cfg.router_aux_loss_coef > 0
        return cfg.n_experts > 0 and (name == "moe_renorm_flipped" or cfg.router_aux_loss_coef > 0)
    return True


# ---------------------------------------------------------------------------------------------
# The model.

def lm_head_weight(W, cfg):
    return W["model.embed_tokens.weight"] if cfg.tie_word_embeddings else W["lm_head.weight"]


def forward(W, ids, cfg, hooks=HF, moe_stats=None):
    """Logits (B, T, V) for token ids (B, T); every sequence starts at position 0. With experts,
    each layer appends (its aux summed over the B sequences, its routing statistics) to moe_stats."""
    B, T = ids.shape
    emb = W["model.embed_tokens.weight"]
    C = emb.shape[1]
    NH, NKV = cfg.n_head, cfg.n_kv_head
    # Head size from q_proj's rows, as newer HF configs may set head_dim apart from C / NH.
    hd = W["model.layers.0.self_attn.q_proj.weight"].shape[0] // NH if cfg.n_layer else C // NH
    eps = cfg.rms_norm_eps if hooks.rms_eps is None else hooks.rms_eps
    cos, sin = rope_cos_sin(T, hd, cfg.rope_theta, emb.dtype)
    x = emb[ids]
    for l in range(cfg.n_layer):
        p = f"model.layers.{l}."
        h = rms_norm(x, W[p + "input_layernorm.weight"], eps)
        q = F.linear(h, W[p + "self_attn.q_proj.weight"]).view(B, T, NH, hd).transpose(1, 2)
        k = F.linear(h, W[p + "self_attn.k_proj.weight"]).view(B, T, NKV, hd).transpose(1, 2)
        v = F.linear(h, W[p + "self_attn.v_proj.weight"]).view(B, T, NKV, hd).transpose(1, 2)
        q, k = hooks.rope(q, cos, sin), hooks.rope(k, cos, sin)
        k, v = hooks.repeat_kv(k, NH // NKV), hooks.repeat_kv(v, NH // NKV)
        y = causal_attention(q, k, v).transpose(1, 2).reshape(B, T, NH * hd)  # heads side by side
        x = x + F.linear(y, W[p + "self_attn.o_proj.weight"])
        h = rms_norm(x, W[p + "post_attention_layernorm.weight"], eps)
        if cfg.n_experts and l >= cfg.first_k_dense:
            renorm = cfg.norm_topk_prob if hooks.moe_renorm is None else hooks.moe_renorm
            y, aux, routing = torch_mixtral.moe_block(h, W, p, cfg, hooks.act, renorm, hooks.aux_rule,
                                                      hooks.bias_rule, hooks.capacity_rule, hooks.shared_experts,
                                                      hooks)
            if moe_stats is not None:
                moe_stats.append((aux, routing))
            x = x + y
            continue
        m = hooks.act(F.linear(h, W[p + "mlp.gate_proj.weight"])) * F.linear(h, W[p + "mlp.up_proj.weight"])
        x = x + F.linear(m, W[p + "mlp.down_proj.weight"])
    x = rms_norm(x, W["model.norm.weight"], eps)
    return F.linear(x, lm_head_weight(W, cfg))


def loss_fn(W, ids, targets, cfg, hooks=HF):
    return objective(W, ids, targets, cfg, hooks)[0]


def objective(W, ids, targets, cfg, hooks=HF):
    """(what backward runs on, the cross-entropy, the mean load-balancing loss, the routing (per
    layer's tokens per expert, flattened, the smallest top-k gap, the mean z-loss), the logits):
    for a dense model the first two are the same, aux 0 and routing None.
    With experts: cross-entropy + router_aux_loss_coef x aux averaged over layers and sequences."""
    stats = []
    logits = forward(W, ids, cfg, hooks, stats)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    if not stats:
        return ce, ce, 0.0, None, logits
    layers = cfg.n_layer if hooks.aux_over_all_layers else cfg.moe_layers()  # averaged over the MoE layers
    aux = sum(a for a, _ in stats) / (layers * ids.shape[0])
    coef = cfg.router_aux_loss_coef if hooks.aux_in_objective else 0.0
    z = sum(r["z"] for _, r in stats) / (layers * ids.numel())
    routing = {"load": [n for _, r in stats for n in r["load"]], "gap": min(r["gap"] for _, r in stats), "z": z,
               "dropped": sum(r["dropped"] for _, r in stats), "bias_changed": sum(r["bias_changed"] for _, r in stats)}
    z_coef = cfg.router_z_loss_coef if hooks.z_in_objective else 0.0
    return ce + coef * aux + z_coef * z, ce, aux, routing, logits


def param_shapes(cfg, hidden, intermediate, vocab):
    """{HF name: shape} in HF's state_dict order (lm_head last, absent when tied)."""
    hd = hidden // cfg.n_head
    s = {"model.embed_tokens.weight": (vocab, hidden)}
    for l in range(cfg.n_layer):
        p = f"model.layers.{l}."
        s[p + "self_attn.q_proj.weight"] = (cfg.n_head * hd, hidden)
        s[p + "self_attn.k_proj.weight"] = (cfg.n_kv_head * hd, hidden)
        s[p + "self_attn.v_proj.weight"] = (cfg.n_kv_head * hd, hidden)
        s[p + "self_attn.o_proj.weight"] = (hidden, cfg.n_head * hd)
        if cfg.n_experts and l >= cfg.first_k_dense:
            s.update(torch_mixtral.param_shapes(cfg, p, hidden, cfg.moe_intermediate_size or intermediate))
        else:
            s[p + "mlp.gate_proj.weight"] = (intermediate, hidden)
            s[p + "mlp.up_proj.weight"] = (intermediate, hidden)
            s[p + "mlp.down_proj.weight"] = (hidden, intermediate)
        s[p + "input_layernorm.weight"] = (hidden,)
        s[p + "post_attention_layernorm.weight"] = (hidden,)
    s["model.norm.weight"] = (hidden,)
    if not cfg.tie_word_embeddings:
        s["lm_head.weight"] = (vocab, hidden)
    return s


def random_weights(cfg, hidden, intermediate, vocab, seed, dtype=torch.float64, std=0.02):
    """Weights with HF names: matrices N(0, std), norm gains 1 + N(0, 0.1) (away from 1 so their
    gradients matter)."""
    g = torch.Generator().manual_seed(seed)
    W = {}
    for name, shape in param_shapes(cfg, hidden, intermediate, vocab).items():
        if len(shape) == 1:
            W[name] = 1 + 0.1 * torch.randn(shape, generator=g, dtype=torch.float64)
        else:
            W[name] = std * torch.randn(shape, generator=g, dtype=torch.float64)
    return {k: v.to(dtype) for k, v in W.items()}
