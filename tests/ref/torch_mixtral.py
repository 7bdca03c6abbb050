"""Mixtral's sparse mixture-of-experts MLP written directly in PyTorch the way Hugging Face's
MixtralSparseMoeBlock computes it (transformers/models/mixtral/modeling_mixtral.py), for
torch_llama.forward, which uses it in place of the dense SwiGLU when the config has experts.
Weights, Hugging Face names, nn.Linear layout [out, in]:

  model.layers.N.block_sparse_moe.gate.weight         (E, C)   the router, no bias
  model.layers.N.block_sparse_moe.experts.J.w1.weight (I, C)   gate projection of expert J
  model.layers.N.block_sparse_moe.experts.J.w3.weight (I, C)   up projection
  model.layers.N.block_sparse_moe.experts.J.w2.weight (C, I)   down projection

What HF does: p = softmax(gate(x)) over all E experts (in fp32), the top k of p per token, those
k weights renormalised to sum 1 (Mixtral always; Qwen2-MoE's norm_topk_prob may turn it off),
and out = sum over the k chosen experts of weight * w2(silu(w1 x) * w3 x). The weights carry the
router's gradient; which experts are chosen does not (top-k is piecewise constant).

The load-balancing loss is Trident's sequence-level rule (docs/moe.md), not HF's batch-level
load_balancing_loss_func: per layer and per sequence of T tokens, f_e = E / (k T) x (the
sequence's tokens routed to e), P_e = the mean over the sequence of p_e, aux = sum_e f_e P_e
(f carries no gradient); averaged over layers and sequences, times router_aux_loss_coef, added to
the cross-entropy. HF's rule is kept as a mutant (`aux_rule="batch"`: the same sums over all the
layer's tokens at once).

The router z-loss (ST-MoE; off unless router_z_loss_coef > 0): per token, logsumexp(router
logits)^2, averaged over layers and tokens, times router_z_loss_coef, added to the objective.

DeepSeek-V3's variants (transformers' DeepseekV3MoE): the first first_k_dense layers keep the dense
SwiGLU (torch_llama.forward), and with n_shared_experts S every token also passes through the
shared experts, one ungated SwiGLU of width S x I added to the routed experts' output:

  model.layers.N.block_sparse_moe.shared_experts.{gate,up,down}_proj.weight  (S I, C), (S I, C), (C, S I)

The aux and z averages are over the MoE layers only (the dense ones have no router)."""
import torch
import torch.nn.functional as F


def moe_block(x, W, prefix, cfg, act, renorm, aux_rule, shared=True):
    """x (B, T, C) -> (out (B, T, C), this layer's aux summed over its B sequences, routing
    statistics: tokens routed to each expert, the z terms summed over the layer's tokens, and the
    smallest gap between a token's k-th and (k+1)-th probability, which says how far the routing
    is from a tie)."""
    B, T, C = x.shape
    E, K = cfg.n_experts, cfg.top_k
    moe = prefix + "block_sparse_moe."
    rows = x.reshape(B * T, C)
    logits = F.linear(rows, W[moe + "gate.weight"])
    probs = logits.softmax(dim=-1)
    weights, chosen = torch.topk(probs, K, dim=-1)
    if renorm:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    out = torch.zeros_like(rows)
    for e in range(E):
        token, slot = (chosen == e).nonzero(as_tuple=True)
        if token.numel() == 0:
            continue
        xe = rows[token]
        w1, w3, w2 = (W[f"{moe}experts.{e}.{n}.weight"] for n in ("w1", "w3", "w2"))
        ye = F.linear(act(F.linear(xe, w1)) * F.linear(xe, w3), w2)
        out = out.index_add(0, token, ye * weights[token, slot].unsqueeze(-1))
    if cfg.n_shared_experts and shared:  # ungated, every token (DeepseekV3MoE.shared_experts)
        sp = moe + "shared_experts."
        out = out + F.linear(act(F.linear(rows, W[sp + "gate_proj.weight"])) * F.linear(rows, W[sp + "up_proj.weight"]),
                             W[sp + "down_proj.weight"])
    routed = F.one_hot(chosen, E).sum(dim=1).to(probs.dtype)  # (B*T, E): 1 where chosen
    if aux_rule == "sequence":
        f = E / (K * T) * routed.view(B, T, E).sum(dim=1)  # (B, E)
        aux = (f * probs.view(B, T, E).mean(dim=1)).sum()
    else:  # "batch"
        f = E / (K * B * T) * routed.sum(dim=0)
        aux = B * (f * probs.mean(dim=0)).sum()  # as B sequences' worth, to average alike
    sorted_p = probs.detach().sort(dim=-1, descending=True).values
    gap = (sorted_p[:, K - 1] - sorted_p[:, K]).min().item() if K < E else float("inf")
    z = torch.logsumexp(logits, dim=-1).pow(2).sum()
    return out.view(B, T, C), aux, {"load": routed.sum(dim=0).long().tolist(), "gap": gap, "z": z}


def param_shapes(cfg, prefix, hidden, intermediate):
    """{HF name: shape} of one layer's MoE MLP, in HF's state_dict order."""
    moe = prefix + "block_sparse_moe."
    s = {moe + "gate.weight": (cfg.n_experts, hidden)}
    for e in range(cfg.n_experts):
        s[f"{moe}experts.{e}.w1.weight"] = (intermediate, hidden)
        s[f"{moe}experts.{e}.w2.weight"] = (hidden, intermediate)
        s[f"{moe}experts.{e}.w3.weight"] = (intermediate, hidden)
    if cfg.n_shared_experts:
        width = cfg.n_shared_experts * intermediate
        for n, shape in (("gate_proj", (width, hidden)), ("up_proj", (width, hidden)), ("down_proj", (hidden, width))):
            s[f"{moe}shared_experts.{n}.weight"] = shape
    return s
