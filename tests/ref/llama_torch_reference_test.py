"""Trident's Llama vs PyTorch (torch_llama.py, HF's LlamaForCausalLM semantics): the same weights
(written by Trident as safetensors with Hugging Face names) give the same logits, loss and
every parameter's gradient, and 10 AdamW steps with a cosine schedule and gradient clipping
give the same losses, grad norms and final weights; for MHA and GQA, tied and untied heads, and
for Mixtral (torch_mixtral.py: HF's MixtralSparseMoeBlock, 4 experts, top 2, weights renormalised
or not, the load-balancing loss at coefficient 0.5 in the objective so that its router gradient
is large enough to check): the same plus every step's aux loss.

The reference runs in float64, so every difference measured is Trident's fp32 rounding; the
bounds are derived in fp32_bounds.py (Fp32Bounds.llama). The test then shows they bite: it
reruns the reference with a plausible bug planted on the PyTorch side and requires each mutant
to fail the checks named in MUTANTS (a mutant that changes nothing for a shape, the kv-head
mapping when NKV is 1 or NH, is skipped for it). Measured on a --torch-fp32 dump (gqa_untied,
bounds: logits 7.4e-6, gradients 1.5e-5, updates 1.5e-4): interleaved RoPE fails logits by 1.1e-2,
the interleaved kv mapping by 0.74, eps x10 by 0.12, tanh-GELU for SiLU by 1.3e-2; dropping
weight decay fails the losses at 1.8x their bound and the weights by 5.4e-3; a learning rate 10%
off at step 3 fails the losses at 58x and the weights by 2.3e-2. The fp32 dump itself passes
with logits at 2.7e-7, gradients 7.0e-7 and updates 6.4e-5.

Dump format (what tests/tools/gpt_reference_dump writes, --family llama): OUT/init.safetensors
(initial weights, HF names, logical shapes; a tied model has no lm_head.weight, or one equal to
model.embed_tokens.weight), OUT/step0.safetensors ("logits" (B*T, V) and "grad.NAME" for every
weight at the initial weights on batch 0), OUT/final.safetensors (weights after the steps),
OUT/meta.json: n_layer, n_head, n_kv_head, rope_theta, rms_norm_eps, tie_word_embeddings,
batch_size, seq_len, lr, min_lr, warmup_steps, grad_clip, weight_decay, beta1, beta2, eps,
batches [{ids, targets}] (flat B*T each), losses (cross-entropy), grad_norms (per step, before
clipping, of the whole objective); Mixtral also n_experts, top_k, norm_topk_prob,
router_aux_loss_coef, first_k_dense, n_shared_experts, aux_losses (per step, unweighted, averaged
over the MoE layers and sequences) and expert_load (per step, the (MoE layers, E) tokens routed to
each expert).

Routing is discrete: a token whose k-th and (k+1)-th router probabilities were within rounding
of each other could pick another expert in fp32 than in float64. So the test compares the
tokens per expert of every layer and step exactly, and prints beside it the smallest such gap
per step: a routing difference next to a gap of the order of the forward bound is a tie, not
a bug (then change the dump's seed); next to a large gap it is a bug.
Hidden size, intermediate size and vocabulary are read from the weights' shapes.

Usage:
  llama_torch_reference_test.py BUILD_DIR [CASE ...]   run BUILD_DIR/tests/tools/gpt_reference_dump
                                                       --family llama for each case (default: all)
  llama_torch_reference_test.py --dumps DIR [DIR ...]  check dumps already written
  llama_torch_reference_test.py --torch-fp32 [CASE ...]
      check dumps that torch_llama itself writes in float32 instead of Trident: validates this
      test (bounds and mutants) without the C++ side; used by torch_llama_selftest.py
Cases: """
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_np  # noqa: E402
import torch_gpt2  # noqa: E402  (lr_at: Trident's schedule, written independently)
import torch_llama  # noqa: E402
import torch_mixtral  # noqa: E402  (update_bias: the aux-free bias rule, written independently)
from fp32_bounds import Fp32Bounds, compare_updates, rel_err  # noqa: E402

# The shapes the dump tool is asked for: MHA and GQA (NKV = 2 of NH = 4, so the contiguous
# and the interleaved kv-head mappings differ), tied and untied.
CASES = {
    "mha_untied": {"n_kv_head": 4, "tie_word_embeddings": False},
    "mha_tied": {"n_kv_head": 4, "tie_word_embeddings": True},
    "gqa_untied": {"n_kv_head": 2, "tie_word_embeddings": False},
    "gqa_tied": {"n_kv_head": 2, "tie_word_embeddings": True},
    "moe_top2": {"n_kv_head": 2, "tie_word_embeddings": False, "n_experts": 4, "top_k": 2, "norm_topk_prob": True,
                 "z_loss_coef": 0.1},
    "moe_top2_raw": {"n_kv_head": 2, "tie_word_embeddings": False, "n_experts": 4, "top_k": 2,
                     "norm_topk_prob": False},
    # The aux-free bias (a preset nonzero bias, updated every step) and a capacity that drops.
    "moe_capacity_bias": {"n_kv_head": 2, "tie_word_embeddings": False, "n_experts": 4, "top_k": 2,
                          "norm_topk_prob": True, "bias_rate": 0.005, "capacity_factor": 1.0},
    # DeepSeek-V3's layer mix: layer 0 dense (first_k_dense 1), layer 1 MoE with one shared expert.
    "moe_dense_shared": {"n_kv_head": 2, "tie_word_embeddings": False, "n_experts": 4, "top_k": 2,
                         "norm_topk_prob": True, "z_loss_coef": 0.1, "first_k_dense": 1, "shared_experts": 1},
    # DeepSeek's widths: the dense layer 0 176 wide (intermediate_size), the experts and the shared
    # expert 48 (moe_intermediate_size).
    "moe_widths": {"n_kv_head": 2, "tie_word_embeddings": False, "n_experts": 4, "top_k": 2,
                   "norm_topk_prob": True, "z_loss_coef": 0.1, "first_k_dense": 1, "shared_experts": 1,
                   "moe_inner": 48},
    # DeepSeek-V3's router: sigmoid scores, 8 experts in 2 groups of 4 of which the best 1 is
    # eligible, top 2, renormalised, times 2.5, with a preset aux-free bias updated every step.
    "moe_sigmoid_groups": {"n_kv_head": 2, "tie_word_embeddings": False, "n_experts": 8, "top_k": 2,
                           "norm_topk_prob": True, "bias_rate": 0.005, "moe_inner": 48, "scoring_func": "sigmoid",
                           "routed_scaling": 2.5, "n_group": 2, "topk_group": 1},
}
__doc__ += ", ".join(CASES)


def dump_command(tool, case, out):
    c = CASES[case]
    moe = ["--n-experts", str(c["n_experts"]), "--top-k", str(c["top_k"]),
           "--norm-topk-prob", "1" if c["norm_topk_prob"] else "0",
           "--z-loss-coef", str(c.get("z_loss_coef", 0.0)), "--bias-rate", str(c.get("bias_rate", 0.0)),
           "--capacity-factor", str(c.get("capacity_factor", 0.0)), "--first-k-dense", str(c.get("first_k_dense", 0)),
           "--shared-experts", str(c.get("shared_experts", 0)), "--moe-inner", str(c.get("moe_inner", 0)),
           "--scoring-func", c.get("scoring_func", "softmax"), "--routed-scaling", str(c.get("routed_scaling", 1.0)),
           "--n-group", str(c.get("n_group", 1)), "--topk-group", str(c.get("topk_group", 1))] if c.get("n_experts") else []
    return [tool, "--family", "mixtral" if moe else "llama", "--n-kv-head", str(c["n_kv_head"]),
            "--tie-word-embeddings", "1" if c["tie_word_embeddings"] else "0"] + moe + [out]


# Each mutant and the checks it must fail (a prefix of the check's name).
MUTANTS = {
    "rope_interleaved": ["logits", "every parameter's gradient", "final weights"],
    "kv_heads_interleaved": ["logits", "every parameter's gradient", "final weights"],
    "rms_eps_x10": ["logits", "every parameter's gradient"],
    "gelu_for_silu": ["logits", "every parameter's gradient", "final weights"],
    "no_weight_decay": ["step losses", "final weights"],
    "lr_off_at_step_3": ["step losses", "final weights"],
    "moe_renorm_flipped": ["logits", "every parameter's gradient", "final weights"],
    "moe_aux_dropped": ["every parameter's gradient", "final weights"],
    "moe_aux_batch_level": ["every parameter's gradient"],
    "moe_z_dropped": ["every parameter's gradient", "final weights"],
    "moe_bias_in_weights": ["logits", "every parameter's gradient", "final weights"],
    "moe_bias_ignored": ["logits", "routing: every layer's tokens per expert at every step", "final weights"],
    "moe_bias_update_flipped": ["router bias", "final weights"],
    "moe_capacity_by_position": ["logits", "every parameter's gradient", "final weights"],
    "moe_capacity_renormalised": ["logits", "every parameter's gradient", "final weights"],
    "moe_shared_dropped": ["logits", "every parameter's gradient", "final weights"],
    "moe_aux_over_all_layers": ["aux loss", "every parameter's gradient"],
    "moe_groups_ignored": ["logits", "routing: every layer's tokens per expert at every step"],
    "moe_scaling_dropped": ["logits", "every parameter's gradient", "final weights"],
    "moe_sigmoid_aux_raw": ["aux loss", "every parameter's gradient"],
}
OPTIMIZER_MUTANTS = ("no_weight_decay", "lr_off_at_step_3")


class Checks:
    def __init__(self, verbose, tag):
        self.verbose, self.tag, self.failed = verbose, tag, []

    def __call__(self, what, ok, detail):
        if self.verbose:
            print(f"{'ok  ' if ok else 'FAIL'} {self.tag}: {what}: {detail}", flush=True)
        if not ok:
            self.failed.append(what)


def load_dump(out):
    d = {"meta": json.load(open(os.path.join(out, "meta.json")))}
    for k in ("init", "step0", "final"):
        d[k], _ = safetensors_np.load(os.path.join(out, k + ".safetensors"))
    return d


def shapes_of(init):
    emb = init["model.embed_tokens.weight"]
    gate = init.get("model.layers.0.mlp.gate_proj.weight", init.get("model.layers.0.block_sparse_moe.experts.0.w1.weight"))
    return emb.shape[1], gate.shape[0], emb.shape[0]


def tied_head_check(d, cfg, check):
    """A tied model's weights are the embedding's: a dumped lm_head.weight (if any) must equal it
    in the initial and final weights, and is then left out of the comparisons."""
    if not cfg.tie_word_embeddings:
        check("untied model has its own lm_head.weight", "lm_head.weight" in d["init"], "")
        return
    for k in ("init", "final"):
        if "lm_head.weight" in d[k]:
            same = np.array_equal(d[k]["lm_head.weight"], d[k]["model.embed_tokens.weight"])
            check(f"tied lm_head.weight equals the embedding ({k})", same, "")
            del d[k]["lm_head.weight"]
    if "grad.lm_head.weight" in d["step0"]:
        same = np.array_equal(d["step0"]["grad.lm_head.weight"], d["step0"]["grad.model.embed_tokens.weight"])
        check("tied lm_head gradient equals the embedding's", same, "")
        del d["step0"]["grad.lm_head.weight"]


def run_reference(d, mutant, verbose, tag):
    meta, init, step0, final = d["meta"], d["init"], d["step0"], d["final"]
    cfg = torch_llama.LlamaConfig.from_meta(meta)
    hooks = torch_llama.HF if mutant in (None,) + OPTIMIZER_MUTANTS else torch_llama.mutant_hooks(mutant, cfg)
    B, T = meta["batch_size"], meta["seq_len"]
    C, I, V = shapes_of(init)
    bounds = Fp32Bounds.llama(cfg.n_layer, C, I, V, C // cfg.n_head, cfg.rope_theta, B, T)
    check = Checks(verbose, tag)
    if verbose:
        print(f"{tag}: L={cfg.n_layer} C={C} NH={cfg.n_head} NKV={cfg.n_kv_head} I={I} V={V} B={B} T={T} "
              f"theta={cfg.rope_theta} eps={cfg.rms_norm_eps} tied={cfg.tie_word_embeddings} "
              f"experts={cfg.n_experts} top_k={cfg.top_k} renorm={cfg.norm_topk_prob} first_k_dense={cfg.first_k_dense} "
              f"shared={cfg.n_shared_experts} "
              f"aux_coef={cfg.router_aux_loss_coef} z_coef={cfg.router_z_loss_coef}; "
              f"bounds: {bounds.describe()}")
    expected = set(torch_llama.param_shapes(cfg, C, I, V))
    check("the dump holds exactly the model's weights", set(init) == expected and set(final) == expected,
          f"missing {sorted(expected - set(init))[:3]}, unexpected {sorted(set(init) - expected)[:3]}")
    if set(init) != expected:
        return check.failed
    batches = [(torch.tensor(b["ids"]).view(B, T), torch.tensor(b["targets"]).view(B, T)) for b in meta["batches"]]

    E = cfg.n_experts
    bias_names = [f"model.layers.{l}.block_sparse_moe.gate.e_score_correction_bias" for l in range(cfg.n_layer)]
    bias_on = cfg.router_bias_update_rate > 0

    def fresh():
        """The weights, then (state, no gradient, not in the optimizer) the preset router bias."""
        W = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in init.items()}
        if bias_on:
            b0 = np.asarray(meta["router_bias_init"], dtype=np.float32).reshape(cfg.n_layer, E)
            for l, name in enumerate(bias_names):
                W[name] = torch.tensor(b0[l], dtype=torch.float64)
        return W

    def trained(W):
        return [w for k, w in W.items() if k not in bias_names]

    # Forward and backward at the initial weights.
    W = fresh()
    ids, targets = batches[0]
    obj, loss, aux, routing0, logits = torch_llama.objective(W, ids, targets, cfg, hooks)
    obj.backward()
    moe = cfg.n_experts > 0
    e = rel_err(step0["logits"], logits.detach().numpy().reshape(B * T, V))
    check("logits", e < bounds.forward_rel, f"max rel err {e:.2e} (bound {bounds.forward_rel:.2e})")
    e = abs(meta["losses"][0] - loss.item()) / loss.item()
    check("loss", e < bounds.loss_rel(0), f"trident {meta['losses'][0]:.9f} torch {loss.item():.9f} rel {e:.2e}")
    if moe:
        e = abs(meta["aux_losses"][0] - aux.item()) / aux.item()
        check("aux loss", e < bounds.loss_rel(0), f"trident {meta['aux_losses'][0]:.9f} torch {aux.item():.9f} rel {e:.2e}")
        z = routing0["z"].item()
        e = abs(meta["z_losses"][0] - z) / z
        check("z-loss", e < bounds.loss_rel(0), f"trident {meta['z_losses'][0]:.9f} torch {z:.9f} rel {e:.2e}")
        if bias_on:
            check("the preset bias changes some tokens' experts", routing0["bias_changed"] > 0,
                  f"{routing0['bias_changed']} (token, layer) selections differ from the unbiased top k")
        if cfg.expert_capacity_factor > 0:
            check("capacity drops some pairs", routing0["dropped"] > 0, f"{routing0['dropped']} pairs dropped at step 0")
    worst, worst_name, missing = 0.0, "", []
    for name, w in W.items():
        if name in bias_names:
            continue
        if "grad." + name not in step0:
            missing.append(name)
            continue
        # A weight the (mutant) objective does not use has no gradient: zero.
        e = rel_err(step0["grad." + name], w.grad.numpy() if w.grad is not None else np.zeros(w.shape))
        if e > worst:
            worst, worst_name = e, name
    check("every parameter's gradient", worst < bounds.backward_rel and not missing,
          f"worst max rel err {worst:.2e} ({worst_name}) over {len(W)} tensors (bound {bounds.backward_rel:.2e})"
          + (f"; no gradient dumped for {missing[:3]}" if missing else ""))

    # Ten AdamW steps with clipping, in float64. Matrices and embeddings decay; RMSNorm gains do
    # not (Trident's ParamInfo::weight_decay; the same rule as the GPT-2 test).
    W = fresh()
    wd = 0.0 if mutant == "no_weight_decay" else meta["weight_decay"]
    decay = [w for w in trained(W) if w.dim() >= 2]
    no_decay = [w for w in trained(W) if w.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=meta["lr"], betas=(meta["beta1"], meta["beta2"]), eps=meta["eps"])
    clipped, loss_ratio, norm_ratio, aux_ratio, lr_budget, detail = 0, 0.0, 0.0, 0.0, 0.0, []
    gaps, loads, dropped, bias_equal = [], [], [], []
    bias = np.asarray(meta.get("router_bias_init", []), dtype=np.float32).reshape(cfg.n_layer, -1) if bias_on else None
    for step, (ids, targets) in enumerate(batches):
        lr = torch_gpt2.lr_at(step, meta["lr"], meta["min_lr"], meta["warmup_steps"], len(batches))
        if mutant == "lr_off_at_step_3" and step == 3:
            lr *= 1.1
        lr_budget += lr
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad()
        obj, loss, aux, routing, _ = torch_llama.objective(W, ids, targets, cfg, hooks)
        obj.backward()
        if moe:
            gaps.append(routing["gap"])
            loads.append(routing["load"])
            aux_ratio = max(aux_ratio, abs(meta["aux_losses"][step] - aux.item()) / aux.item() / bounds.loss_rel(step))
        norm = torch.nn.utils.clip_grad_norm_(trained(W), meta["grad_clip"]).item()
        clipped += norm > meta["grad_clip"]
        opt.step()
        if moe:
            dropped.append(routing["dropped"])
        if bias_on:  # once per step, from this step's tokens per expert (before dropping)
            for l, name in enumerate(bias_names):
                bias[l] = torch_mixtral.update_bias(bias[l], routing["load"][l * E:(l + 1) * E],
                                                    hooks.bias_update_sign * cfg.router_bias_update_rate)
                W[name] = torch.tensor(bias[l], dtype=torch.float64)
            bias_equal.append(np.array_equal(bias.reshape(-1), np.asarray(meta["router_biases"][step], dtype=np.float32)))
        tl, tn = meta["losses"][step], meta["grad_norms"][step]
        le, ne = abs(tl - loss.item()) / loss.item(), abs(tn - norm) / norm
        loss_ratio = max(loss_ratio, le / bounds.loss_rel(step))
        norm_ratio = max(norm_ratio, ne / bounds.grad_norm_rel(step))
        detail.append(f"{le:.1e}/{ne:.1e}")
    check("step losses", loss_ratio < 1, f"worst at {loss_ratio:.3f} of the bound (loss/grad-norm rel err per step: "
          f"{' '.join(detail)})")
    check("step grad norms", norm_ratio < 1, f"worst at {norm_ratio:.3f} of the bound")
    if moe:
        check("step aux losses", aux_ratio < 1, f"worst at {aux_ratio:.3f} of the bound")
        want = [[int(n) for n in step] for step in meta["expert_load"]]
        first = next((s for s, (a, b) in enumerate(zip(loads, want)) if a != b), None)
        check("routing: every layer's tokens per expert at every step", loads == want,
              (f"equal; " if first is None else f"first difference at step {first}: torch {loads[first]} "
               f"trident {want[first]}; ") + "smallest k-th/(k+1)-th probability gap per step "
              f"{' '.join(f'{g:.1e}' for g in gaps)} (forward bound {bounds.forward_rel:.1e})")
    if moe and "dropped" in meta:
        check("capacity: pairs dropped at every step", dropped == meta["dropped"],
              f"torch {dropped} trident {meta['dropped']}")
    if bias_on:
        check("router bias", all(bias_equal),
              f"bitwise (fp32) after every step: equal at steps {[s for s, ok in enumerate(bias_equal) if ok]} of {len(bias_equal)}")
    check("clipping engaged on some steps but not all", 0 < clipped < len(batches),
          f"{clipped} of {len(batches)} steps clipped")
    ref = {k: w.detach().numpy() for k, w in W.items() if k not in bias_names}  # the bias: checked above
    # No Llama weight has an element with an exactly zero gradient (no biases), so nothing is
    # exempt from the update bound (update_exempt matches GPT-2's key bias only).
    worst, name, _, bad = compare_updates(init, final, ref, C, len(batches), bounds, lr_budget)
    check("final weights", not bad, f"worst update rel err {worst:.2e} ({name}), bound "
          f"{bounds.update_rel(len(batches)):.2e}" + (f"; {bad[:3]}" if bad else ""))
    return check.failed


def check_dump(out, tag):
    """All checks on one dump, then every mutant; returns the names of what failed."""
    d = load_dump(out)
    cfg = torch_llama.LlamaConfig.from_meta(d["meta"])
    pre = Checks(True, tag)
    tied_head_check(d, cfg, pre)
    failures = pre.failed + run_reference(d, None, verbose=True, tag=tag)
    for mutant, must_fail in MUTANTS.items():
        if not torch_llama.mutant_applies(mutant, cfg):
            print(f"skip {tag}: mutant {mutant} changes nothing for this config (NKV={cfg.n_kv_head}, NH={cfg.n_head}, experts={cfg.n_experts}, z_coef={cfg.router_z_loss_coef})")
            continue
        got = run_reference(d, mutant, verbose=False, tag=tag)
        missed = [c for c in must_fail if c not in got]
        print(f"{'ok  ' if not missed else 'FAIL'} {tag}: mutant {mutant} is caught: fails {got}"
              + (f"; should also fail {missed}" if missed else ""), flush=True)
        if missed:
            failures.append(f"{tag}: mutant {mutant}")
    return [f"{tag}: {f}" if not f.startswith(tag) else f for f in failures]


# ---------------------------------------------------------------------------------------------
# A stand-in for Trident's dump: the same model run by torch_llama in float32, written in the
# dump format. Its differences from the float64 reference are fp32 rounding, as Trident's are.

TORCH_FP32_SHAPE = {"n_layer": 2, "n_head": 4, "hidden": 64, "intermediate": 176, "vocab": 101,
                    "batch_size": 4, "seq_len": 16, "rope_theta": 10000.0, "rms_norm_eps": 1e-5}


def write_torch_fp32_dump(out, case, steps=10):
    s = TORCH_FP32_SHAPE
    cfg = torch_llama.LlamaConfig(n_layer=s["n_layer"], n_head=s["n_head"], n_kv_head=CASES[case]["n_kv_head"],
                                  rope_theta=s["rope_theta"], rms_norm_eps=s["rms_norm_eps"],
                                  tie_word_embeddings=CASES[case]["tie_word_embeddings"])
    B, T, V = s["batch_size"], s["seq_len"], s["vocab"]
    init = torch_llama.random_weights(cfg, s["hidden"], s["intermediate"], V, seed=1234, dtype=torch.float32)
    rng = np.random.default_rng(5)
    meta = {"n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_kv_head": cfg.n_kv_head, "rope_theta": cfg.rope_theta,
            "rms_norm_eps": cfg.rms_norm_eps, "tie_word_embeddings": cfg.tie_word_embeddings, "batch_size": B,
            "seq_len": T, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2, "weight_decay": 0.1, "beta1": 0.9,
            "beta2": 0.95, "eps": 1e-8, "batches": []}
    for _ in range(steps):
        r = rng.integers(0, 100, B * T)  # a learnable pattern, as the C++ dump uses
        meta["batches"].append({"ids": (r % V).tolist(), "targets": ((r * 3 + 1) % V).tolist()})

    def train(grad_clip):
        W = {k: v.clone().requires_grad_(True) for k, v in init.items()}
        decay = [w for w in W.values() if w.dim() >= 2]
        no_decay = [w for w in W.values() if w.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": meta["weight_decay"]},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=meta["lr"], betas=(meta["beta1"], meta["beta2"]), eps=meta["eps"])
        losses, norms, step0 = [], [], {}
        for step, b in enumerate(meta["batches"]):
            ids, targets = torch.tensor(b["ids"]).view(B, T), torch.tensor(b["targets"]).view(B, T)
            for g in opt.param_groups:
                g["lr"] = torch_gpt2.lr_at(step, meta["lr"], meta["min_lr"], meta["warmup_steps"], steps)
            opt.zero_grad()
            logits = torch_llama.forward(W, ids, cfg)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))
            loss.backward()
            norms.append(torch.nn.utils.clip_grad_norm_(list(W.values()), grad_clip).item())
            losses.append(loss.item())
            if step == 0:
                step0 = {"logits": logits.detach().reshape(B * T, V).numpy()}
                step0.update({"grad." + k: w.grad.numpy().copy() for k, w in W.items()})
            opt.step()
        return losses, norms, step0, {k: w.detach().numpy() for k, w in W.items()}

    # A clip between the steps' norms, so that some steps clip and some do not.
    _, norms, _, _ = train(float("inf"))
    meta["grad_clip"] = float(np.median(norms))
    meta["losses"], meta["grad_norms"], step0, final = train(meta["grad_clip"])
    os.makedirs(out, exist_ok=True)
    safetensors_np.save(os.path.join(out, "init.safetensors"), {k: v.numpy() for k, v in init.items()})
    safetensors_np.save(os.path.join(out, "step0.safetensors"), step0)
    safetensors_np.save(os.path.join(out, "final.safetensors"), final)
    json.dump(meta, open(os.path.join(out, "meta.json"), "w"))


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    torch.set_num_threads(2)
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        if args[0] == "--dumps":
            dumps = [(os.path.basename(os.path.normpath(p)), p) for p in args[1:]]
        else:
            cases = args[1:] or list(CASES)
            unknown = [c for c in cases if c not in CASES]
            if unknown:
                sys.exit(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
            dumps = []
            for case in cases:
                out = os.path.join(tmp, case)
                if args[0] == "--torch-fp32":
                    write_torch_fp32_dump(out, case)
                else:
                    tool = os.path.join(args[0], "tests", "tools", "gpt_reference_dump")
                    os.makedirs(out)
                    subprocess.run(dump_command(tool, case, out), check=True, stdout=subprocess.DEVNULL)
                dumps.append((case, out))
        for tag, out in dumps:
            failures += check_dump(out, tag)
    if failures:
        print(f"{len(failures)} check(s) failed: {failures}")
        sys.exit(1)
    print("all reference checks passed")


if __name__ == "__main__":
    main()
