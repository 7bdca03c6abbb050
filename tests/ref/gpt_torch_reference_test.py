"""Trident vs PyTorch: same weights (written by Trident as safetensors with Hugging Face names)
give the same logits, loss and every parameter's gradient, and 10 AdamW steps with a cosine
schedule and gradient clipping give the same loss, grad norm and final weights.

The reference runs in float64, so every difference measured is Trident's fp32 rounding; the
bounds are derived in fp32_bounds.py. The test then shows they bite: it reruns the reference
with a plausible bug planted on the PyTorch side (exact-erf GELU, no weight decay, a learning
rate 10% off at one step) and requires each mutant to fail the checks named beside it.

Usage: gpt_torch_reference_test.py BUILD_DIR"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_np  # noqa: E402
import torch_gpt2  # noqa: E402
from fp32_bounds import Fp32Bounds, compare_updates, rel_err  # noqa: E402

# Each mutant and the checks it must fail (a prefix of the check's name).
MUTANTS = {
    "erf_gelu": ["logits", "every parameter's gradient", "final weights"],
    "no_weight_decay": ["step losses", "final weights"],
    "lr_off_at_step_3": ["step losses", "final weights"],
}


class Checks:
    def __init__(self, verbose):
        self.verbose, self.failed = verbose, []

    def __call__(self, what, ok, detail):
        if self.verbose:
            print(f"{'ok  ' if ok else 'FAIL'} {what}: {detail}")
        if not ok:
            self.failed.append(what)


def run_reference(d, mutant, verbose):
    meta, init, step0, final = d["meta"], d["init"], d["step0"], d["final"]
    gelu = (lambda x: torch.nn.functional.gelu(x)) if mutant == "erf_gelu" else torch_gpt2.gelu_new
    L, NH, B, T = meta["n_layer"], meta["n_head"], meta["batch_size"], meta["seq_len"]
    C = init["wte.weight"].shape[1]
    bounds = Fp32Bounds(L, C, B * T)
    check = Checks(verbose)
    if verbose:
        print(f"bounds: {bounds.describe()}")
    batches = [(torch.tensor(b["ids"]).view(B, T), torch.tensor(b["targets"]).view(B, T)) for b in meta["batches"]]
    W = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in init.items()}

    # Forward and backward at the initial weights.
    ids, targets = batches[0]
    logits = torch_gpt2.forward(W, ids, L, NH, gelu=gelu)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    loss.backward()
    e = rel_err(step0["logits"], logits.detach().numpy().reshape(B * T, -1))
    check("logits", e < bounds.forward_rel, f"max rel err {e:.2e} (bound {bounds.forward_rel:.2e})")
    e = abs(meta["losses"][0] - loss.item()) / loss.item()
    check("loss", e < bounds.loss_rel(0), f"trident {meta['losses'][0]:.9f} torch {loss.item():.9f} rel {e:.2e}")
    worst, worst_name = 0.0, ""
    for name, w in W.items():
        e = rel_err(step0["grad." + name], w.grad.numpy())
        if e > worst:
            worst, worst_name = e, name
    check("every parameter's gradient", worst < bounds.backward_rel,
          f"worst max rel err {worst:.2e} ({worst_name}) over {len(W)} tensors (bound {bounds.backward_rel:.2e})")

    # Ten AdamW steps with clipping, in float64.
    W = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in init.items()}
    wd = 0.0 if mutant == "no_weight_decay" else meta["weight_decay"]
    decay = [w for k, w in W.items() if w.dim() >= 2]
    no_decay = [w for k, w in W.items() if w.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=meta["lr"], betas=(meta["beta1"], meta["beta2"]), eps=meta["eps"])
    clipped, loss_ratio, norm_ratio, lr_budget, detail = 0, 0.0, 0.0, 0.0, []
    for step, (ids, targets) in enumerate(batches):
        lr = torch_gpt2.lr_at(step, meta["lr"], meta["min_lr"], meta["warmup_steps"], len(batches))
        if mutant == "lr_off_at_step_3" and step == 3:
            lr *= 1.1
        lr_budget += lr
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad()
        loss = torch_gpt2.loss_fn(W, ids, targets, L, NH, gelu=gelu)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(list(W.values()), meta["grad_clip"]).item()
        clipped += norm > meta["grad_clip"]
        opt.step()
        tl, tn = meta["losses"][step], meta["grad_norms"][step]
        le, ne = abs(tl - loss.item()) / loss.item(), abs(tn - norm) / norm
        loss_ratio = max(loss_ratio, le / bounds.loss_rel(step))
        norm_ratio = max(norm_ratio, ne / bounds.grad_norm_rel(step))
        detail.append(f"{le:.1e}/{ne:.1e}")
    check("step losses", loss_ratio < 1, f"worst at {loss_ratio:.3f} of the bound (loss/grad-norm rel err per step: "
          f"{' '.join(detail)})")
    check("step grad norms", norm_ratio < 1, f"worst at {norm_ratio:.3f} of the bound")
    check("clipping engaged on some steps but not all", 0 < clipped < len(batches),
          f"{clipped} of {len(batches)} steps clipped")
    ref = {k: w.detach().numpy() for k, w in W.items()}
    worst, name, exempt, bad = compare_updates(init, final, ref, C, len(batches), bounds, lr_budget)
    check("final weights", not bad, f"worst update rel err {worst:.2e} ({name}), bound "
          f"{bounds.update_rel(len(batches)):.2e}; zero-gradient key bias within {exempt:.2e} of sum(lr) "
          f"{lr_budget:.2e}" + (f"; {bad[:3]}" if bad else ""))
    return check.failed


def main():
    build = sys.argv[1]
    tool = os.path.join(build, "tests", "tools", "gpt_reference_dump")
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([tool, out], check=True, stdout=subprocess.DEVNULL)
        d = {"meta": json.load(open(os.path.join(out, "meta.json")))}
        for k in ("init", "step0", "final"):
            d[k], _ = safetensors_np.load(os.path.join(out, k + ".safetensors"))

    failures = run_reference(d, None, verbose=True)
    for mutant, must_fail in MUTANTS.items():
        got = run_reference(d, mutant, verbose=False)
        missed = [c for c in must_fail if c not in got]
        print(f"{'ok  ' if not missed else 'FAIL'} mutant {mutant} is caught: fails {got}"
              + (f"; should also fail {missed}" if missed else ""))
        if missed:
            failures.append(f"mutant {mutant}")
    if failures:
        print(f"{len(failures)} check(s) failed: {failures}")
        sys.exit(1)
    print("all reference checks passed")


if __name__ == "__main__":
    main()
