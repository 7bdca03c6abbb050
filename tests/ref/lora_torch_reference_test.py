"""Trident's LoRA (nn/lora_adapter.h) vs PyTorch: a small GPT-2 and Llama with adapters on a
frozen base (tests/tools/lora_reference_dump: B set non-zero, so every gradient is non-trivial)
give PyTorch's logits, loss and every adapter's lora_A / lora_B gradient.

The reference is PEFT's definition written as the merged weight: each adapted module's weight is
W + (alpha / r) B A (GPT-2's Conv1D [in, out]: W + (alpha / r) (B A)^T), in float64 through
torch_gpt2 / torch_llama, with autograd giving d loss / d A and d B. So it is independent of
Trident's factored product (x A^T) B^T and is also what `merge-lora` must compute.

Bounds (fp32_bounds.py): an adapted stage sums two products, the base's (reduction over in) and
the adapter's (reductions over in and r <= in), so its rounding is at most twice the stage's:
forward_rel and backward_rel are doubled. The test then shows the checks bite, on the
reference side: alpha / r replaced by alpha (the scale PEFT's use_rslora / a confused port
would get wrong), one target's adapter left out, and B A used un-transposed where the base is
Conv1D (rows and columns swapped; shapes permit it only for square targets, so it is applied to
Llama's o_proj, [C, C]) must each fail.

Usage: lora_torch_reference_test.py BUILD_DIR"""
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
import torch_llama  # noqa: E402
from fp32_bounds import Fp32Bounds, rel_err  # noqa: E402

LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"


class Merged(dict):
    """Weights by name; an adapted module's weight is merged with its adapter on lookup."""

    def __init__(self, W, scale, conv1d, mutant=None):
        super().__init__(W)
        self.scale, self.conv1d, self.mutant = scale, conv1d, mutant
        self.adapted = sorted(n[: -len(LORA_A)] for n in W if n.endswith(LORA_A))

    def __getitem__(self, name):
        w = dict.__getitem__(self, name)
        module = name[: -len(".weight")] if name.endswith(".weight") else None
        if module not in self.adapted:
            return w
        if self.mutant == "drop_one_target" and module == self.adapted[0]:
            return w
        a, b = dict.__getitem__(self, module + LORA_A), dict.__getitem__(self, module + LORA_B)
        delta = b @ a  # [out, in]
        if self.conv1d or (self.mutant == "untransposed" and module.endswith("o_proj")):
            delta = delta.t()
        return w + self.scale * delta


def reference(meta, W, mutant=None):
    r, alpha = meta["lora_rank"], meta["lora_alpha"]
    scale = alpha if mutant == "alpha_not_over_r" else alpha / r
    llama = meta["family"] == "llama"
    M = Merged(W, scale, conv1d=not llama, mutant=mutant)
    B, T = meta["batch_size"], meta["seq_len"]
    ids = torch.tensor(meta["ids"]).view(B, T)
    targets = torch.tensor(meta["targets"]).view(B, T)
    if llama:
        cfg = torch_llama.LlamaConfig.from_meta(meta)
        logits = torch_llama.forward(M, ids, cfg)
    else:
        logits = torch_gpt2.forward(M, ids, meta["n_layer"], meta["n_head"])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    names = [n for n in W if n.endswith(LORA_A) or n.endswith(LORA_B)]
    # A dropped target's adapter is unused (the drop_one_target mutant): its gradient is zero.
    grads = torch.autograd.grad(loss, [W[n] for n in names], allow_unused=True)
    grads = [torch.zeros_like(W[n]) if g is None else g for n, g in zip(names, grads)]
    return logits.detach().reshape(B * T, -1).numpy(), float(loss), dict(zip(names, (g.numpy() for g in grads)))


def bounds(meta, W):
    if meta["family"] == "llama":
        hidden = W["model.embed_tokens.weight"].shape[1]
        b = Fp32Bounds.llama(meta["n_layer"], hidden, W["model.layers.0.mlp.up_proj.weight"].shape[0],
                             W["model.embed_tokens.weight"].shape[0], hidden // meta["n_head"], meta["rope_theta"],
                             meta["batch_size"], meta["seq_len"])
    else:
        b = Fp32Bounds(meta["n_layer"], W["wte.weight"].shape[1], meta["batch_size"] * meta["seq_len"])
    return 2.0 * b.forward_rel, 2.0 * b.backward_rel


def failures(meta, W, got, mutant=None):
    """The checks that fail, with their measured and allowed errors."""
    fwd, bwd = bounds(meta, W)
    logits, loss, grads = reference(meta, W, mutant)
    out = []
    e = rel_err(got["logits"], logits)
    out.append(("logits", e, fwd))
    out.append(("loss", abs(meta["loss"] - loss) / abs(loss), fwd))
    worst = max((rel_err(got["grad." + n], g), n) for n, g in grads.items())
    out.append((f"adapter gradients (worst {worst[1]})", worst[0], bwd))
    return [(name, e, bound) for name, e, bound in out if not e <= bound], out


def check(build, family):
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([os.path.join(build, "tests", "tools", "lora_reference_dump"), family, d], check=True,
                       stdout=subprocess.DEVNULL)
        tensors, _ = safetensors_np.load(os.path.join(d, "dump.safetensors"))
        with open(os.path.join(d, "meta.json")) as f:
            meta = json.load(f)
    W = {n: torch.tensor(np.asarray(t, dtype=np.float64), requires_grad=n.endswith((LORA_A, LORA_B)))
         for n, t in tensors.items() if not n.startswith("grad.") and n != "logits"}
    adapters = [n for n in W if n.endswith(LORA_A)]
    assert adapters, f"{family}: the dump holds no adapters"
    ok = True
    bad, measured = failures(meta, W, tensors)
    for name, e, bound in measured:
        print(f"{family}: {name}: {e:.2e} (bound {bound:.2e})")
    if bad:
        print(f"FAIL {family}: {bad}")
        ok = False
    mutants = ["alpha_not_over_r", "drop_one_target"] + (["untransposed"] if family == "llama" else [])
    for m in mutants:
        bad, _ = failures(meta, W, tensors, m)
        print(f"{family}: mutant {m} fails {[(n, f'{e:.1e}') for n, e, _ in bad]}")
        if not bad:
            print(f"FAIL {family}: mutant {m} passes every check")
            ok = False
    return ok


def main():
    build = sys.argv[1]
    torch.set_default_dtype(torch.float64)
    ok = all([check(build, "gpt2"), check(build, "llama")])
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
