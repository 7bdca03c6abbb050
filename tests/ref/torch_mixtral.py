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

Aux-loss-free balancing (DeepSeek-V3; Trident's nn/moe_router.h): with a bias b (E) in W under
model.layers.N.block_sparse_moe.gate.e_score_correction_bias (state, no gradient), the top k
are chosen by p + b and weighted by the unbiased p (renormalised over the k chosen as above);
update_bias is the once-per-step rule b_e += u sign(mean load - load_e), in float32 as Trident.

Capacity (cfg.expert_capacity_factor c > 0): per sequence, cap = min(T, ceil(c T k / E)); an
expert keeps the pairs that chose it by descending p_e, ties by token position (Megatron's
"probs" drop policy); a dropped pair's weight is zeroed, not renormalised away. f_e, the
load and the bias update count the choices before dropping.

DeepSeek-V3's variants (transformers' DeepseekV3MoE): the first first_k_dense layers keep the dense
SwiGLU (torch_llama.forward), and with n_shared_experts S every token also passes through the
shared experts, one ungated SwiGLU of width S x I added to the routed experts' output:

  model.layers.N.block_sparse_moe.shared_experts.{gate,up,down}_proj.weight  (S I, C), (S I, C), (C, S I)

The aux and z averages are over the MoE layers only (the dense ones have no router). With
moe_intermediate_size the routed experts (and the shared ones, S x it) have that width, the dense
layers intermediate_size.

DeepSeek-V3's router (transformers' DeepseekV3TopkRouter, modeling_deepseek_v3.py; Trident's
nn/moe_router.h): scoring_func "sigmoid" scores each expert s_e = sigmoid(logit_e); the choice
is by s + b (b the bias, if any), limited with n_group > 1 to the topk_group groups (of E /
n_group consecutive experts) whose two largest s + b sum highest, the others masked to -inf (as
DeepSeek's own inference code; HF fills 0.0, which only differs when an eligible biased score is
negative); the weights are the unbiased s_j, renormalised over the k when norm_topk_prob, times
routed_scaling_factor. The aux loss's P_e then reads s_e / sum_e' s_e' (DeepSeek-V3's normalised
affinities)."""
import math

import numpy as np
import torch
import torch.nn.functional as F


def capacity_keep(chosen, probs, B, T, E, K, factor, by_position=False):
    """(B*T, K) bool: which (token, slot) pairs their expert keeps under the capacity rule above
    (by_position: Switch Transformers' rule, a mutant)."""
    keep = torch.ones(chosen.shape, dtype=torch.bool)
    if factor <= 0:
        return keep
    cap = min(T, math.ceil(factor * T * K / E))
    p = probs.detach()
    for b in range(B):
        for e in range(E):
            token, slot = (chosen[b * T:(b + 1) * T] == e).nonzero(as_tuple=True)
            if token.numel() <= cap:
                continue
            order = sorted(range(token.numel()), key=lambda i: (0.0 if by_position else -p[b * T + token[i], e].item(),
                                                                 token[i].item()))
            for i in order[cap:]:
                keep[b * T + token[i], slot[i]] = False
    return keep


def update_bias(bias, load, rate):
    """One step of the aux-free bias (float32 numpy array (E,), integer loads (E,))."""
    total, E = sum(load), len(load)
    u = np.float32(rate)
    out = bias.copy()
    for e in range(E):
        d = total - E * load[e]
        if d > 0:
            out[e] = np.float32(out[e] + u)
        elif d < 0:
            out[e] = np.float32(out[e] - u)
    return out


def choose(scores, cfg, K, groups=True):
    """(N, K) the chosen experts: the top K of scores (N, E), among the best topk_group of
    n_group groups when groups (a group's score: the sum of its two largest)."""
    E, G = scores.shape[-1], getattr(cfg, "n_group", 1)
    if groups and G > 1:
        group = scores.view(-1, G, E // G).topk(2, dim=-1).values.sum(dim=-1)
        best = group.topk(cfg.topk_group, dim=-1).indices
        mask = torch.zeros_like(group, dtype=torch.bool).scatter_(1, best, True)
        scores = scores.masked_fill(~mask.repeat_interleave(E // G, dim=1), float("-inf"))
    return scores.topk(K, dim=-1).indices


def moe_block(x, W, prefix, cfg, act, renorm, aux_rule, bias_rule="selection", capacity_rule="probs",
              shared=True, hooks=None):
    """x (B, T, C) -> (out (B, T, C), this layer's aux summed over its B sequences, routing
    statistics: tokens routed to each expert, the z terms summed over the layer's tokens, and the
    smallest gap between a token's k-th and (k+1)-th probability, which says how far the routing
    is from a tie)."""
    B, T, C = x.shape
    E, K = cfg.n_experts, cfg.top_k
    moe = prefix + "block_sparse_moe."
    rows = x.reshape(B * T, C)
    logits = F.linear(rows, W[moe + "gate.weight"])
    sigmoid = getattr(cfg, "scoring_func", "softmax") == "sigmoid"
    probs = logits.sigmoid() if sigmoid else logits.softmax(dim=-1)
    groups = not (hooks is not None and hooks.groups_ignored)
    bias = W.get(moe + "gate.e_score_correction_bias") if bias_rule != "ignored" else None
    unbiased_chosen = choose(probs.detach(), cfg, K, groups)
    if bias is None:
        chosen = unbiased_chosen
        weights = probs.gather(-1, chosen)
    else:
        scores = probs + bias
        chosen = choose(scores.detach(), cfg, K, groups)
        # The weights are the unbiased probabilities ("weights" mutant: the biased scores).
        weights = (scores if bias_rule == "weights" else probs).gather(-1, chosen)
    if renorm:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    if hooks is None or hooks.routed_scaling:
        weights = weights * getattr(cfg, "routed_scaling_factor", 1.0)
    keep = capacity_keep(chosen, probs, B, T, E, K, getattr(cfg, "expert_capacity_factor", 0.0),
                         by_position=capacity_rule == "position")
    if capacity_rule == "renormalised" and renorm:  # mutant: the kept weights renormalised again
        weights = weights * keep / (weights * keep).sum(dim=-1, keepdim=True).clamp_min(1e-30)
    weights = weights * keep  # a dropped pair contributes zero
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
    # The aux loss's affinities: the softmax itself, or the sigmoid scores normalised per token.
    aff = probs / probs.sum(dim=-1, keepdim=True) if sigmoid and (hooks is None or hooks.sigmoid_aux_normalised) else probs
    if aux_rule == "sequence":
        f = E / (K * T) * routed.view(B, T, E).sum(dim=1)  # (B, E)
        aux = (f * aff.view(B, T, E).mean(dim=1)).sum()
    else:  # "batch"
        f = E / (K * B * T) * routed.sum(dim=0)
        aux = B * (f * aff.mean(dim=0)).sum()  # as B sequences' worth, to average alike
    sorted_p = probs.detach().sort(dim=-1, descending=True).values
    gap = (sorted_p[:, K - 1] - sorted_p[:, K]).min().item() if K < E else float("inf")
    z = torch.logsumexp(logits, dim=-1).pow(2).sum()
    changed = int((chosen.sort(dim=-1).values != unbiased_chosen.sort(dim=-1).values).any(dim=-1).sum())
    return out.view(B, T, C), aux, {"load": routed.sum(dim=0).long().tolist(), "gap": gap, "z": z,
                                    "dropped": int((~keep).sum()), "bias_changed": changed}


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
