"""The real training path against an independent PyTorch replay (issue 18): `trident train`
(run config -> engine -> trainer -> sampler -> optimizer options) starts from weights written
here, trains with non-default lr, min_lr, warm-up, cosine decay, beta1, beta2, eps, weight
decay, clipping and gradient accumulation, and logs which rows it trained on (--batch-log).
This script replays the same batches from the token shard with torch.optim.AdamW and its own
learning-rate schedule in float64 and compares every step's loss, grad norm and lr, and the
final weights of the checkpoint, within the bounds derived in fp32_bounds.py. Once on one
process, once on 8 ranks as dp2 x tp2 x pp2 with ZeRO-1.

Anything the trainer fails to pass along (an option not reaching AdamW, a schedule off by a
step, a dropped micro-batch, a dp rank reading another's rows) moves the losses or weights far
past those bounds; the test also plants such a bug on the PyTorch side (beta2 left at its
default, weight decay dropped, the schedule a step late, one micro-batch of each step
dropped) and requires it to fail.

Usage: train_path_reference_test.py BUILD_DIR"""
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "cli"))
import safetensors_np  # noqa: E402
import torch_gpt2  # noqa: E402
from fp32_bounds import Fp32Bounds, compare_updates  # noqa: E402
from harness import mpirun, synthetic_tokens, write_shard  # noqa: E402

L, NH, C, NPOS, V = 2, 4, 32, 32, 97  # V not a multiple of 64: the padded vocabulary is exercised
B, T, ACCUM, STEPS = 8, 16, 2, 12
OPT = {"lr": 4e-3, "min_lr": 5e-4, "warmup_steps": 3, "beta1": 0.85, "beta2": 0.97, "eps": 1e-6,
       "weight_decay": 0.05, "grad_clip": 1.2}
MUTANTS = {"beta2_default": ["step losses", "final weights"], "no_weight_decay": ["final weights"],
           "schedule_one_step_late": ["learning rate of every step", "final weights"],
           "one_micro_batch_dropped": ["step losses", "final weights"]}

failures = []


def check(what, ok, detail, quiet=False, into=None):
    if not quiet:
        print(f"{'ok  ' if ok else 'FAIL'} {what}: {detail}", flush=True)
    if not ok:
        (failures if into is None else into).append(what)


def initial_weights(seed):
    """GPT-2 weights in Hugging Face layout; LayerNorm gains and biases away from 1 and 0 so
    their gradients and decay (none) matter."""
    g = np.random.default_rng(seed)
    w = {"wte.weight": g.normal(0, 0.02, (V, C)), "wpe.weight": g.normal(0, 0.01, (NPOS, C))}
    for l in range(L):
        p = f"h.{l}."
        for ln in ("ln_1", "ln_2"):
            w[p + ln + ".weight"] = 1 + g.normal(0, 0.1, C)
            w[p + ln + ".bias"] = g.normal(0, 0.02, C)
        for name, shape in (("attn.c_attn", (C, 3 * C)), ("attn.c_proj", (C, C)), ("mlp.c_fc", (C, 4 * C)),
                            ("mlp.c_proj", (4 * C, C))):
            w[p + name + ".weight"] = g.normal(0, 0.02, shape)
            w[p + name + ".bias"] = g.normal(0, 0.02, shape[1])
    w["ln_f.weight"] = 1 + g.normal(0, 0.1, C)
    w["ln_f.bias"] = g.normal(0, 0.02, C)
    return {k: v.astype(np.float32) for k, v in w.items()}


def read_shard(path):
    raw = open(path, "rb").read()
    header = np.frombuffer(raw[:1024], dtype=np.int32)
    return np.frombuffer(raw[1024:], dtype=np.uint16)[:header[2]].astype(np.int64)


def train_with_trident(build, d, init_dir, tag, launcher, layout=()):
    out = f"{d}/{tag}"
    cmd = launcher + [os.path.join(build, "trident"), "train", "--init-from", init_dir, "--data", f"{d}/syn",
                      "--batch-size", str(B), "--seq-len", str(T), "--grad-accum", str(ACCUM),
                      "--steps", str(STEPS), "--lr-schedule", "cosine", "--seed", "7", "--eval-every", "0",
                      "--log-every", "100", "--metrics", f"{out}.jsonl", "--batch-log", f"{out}.batches",
                      "--ckpt-dir", out, *layout]
    for k, v in OPT.items():
        cmd += ["--" + k.replace("_", "-"), str(v)]
    env = dict(os.environ, OMP_NUM_THREADS="1", TRIDENT_COMM_TIMEOUT="120")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    check(f"{tag}: trident train runs", p.returncode == 0, p.stderr.strip()[-1500:] if p.returncode else "")
    if p.returncode:
        return None
    metrics = [json.loads(x) for x in open(f"{out}.jsonl")]
    batches = [json.loads(x) for x in open(f"{out}.batches")]
    final, _ = safetensors_np.load(f"{out}/step_{STEPS:08d}/model.safetensors")
    return metrics, batches, final


def replay(init, tokens, batches, mutant):
    """PyTorch in float64: returns per-step (loss, grad norm, lr) and the final weights."""
    W = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in init.items()}
    decay = [w for w in W.values() if w.dim() >= 2]  # matrices and embeddings decay; biases, LayerNorm not
    no_decay = [w for w in W.values() if w.dim() < 2]
    beta2 = 0.95 if mutant == "beta2_default" else OPT["beta2"]
    wd = 0.0 if mutant == "no_weight_decay" else OPT["weight_decay"]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=OPT["lr"], betas=(OPT["beta1"], beta2), eps=OPT["eps"])
    history = []
    for step, b in enumerate(batches):
        offsets = b["offsets"]
        if mutant == "one_micro_batch_dropped":
            offsets = offsets[:B - B // ACCUM]
        rows = np.stack([tokens[o:o + T + 1] for o in offsets])
        ids, targets = torch.tensor(rows[:, :T]), torch.tensor(rows[:, 1:])
        lr = torch_gpt2.lr_at(max(0, step - 1) if mutant == "schedule_one_step_late" else step, OPT["lr"], OPT["min_lr"], OPT["warmup_steps"], STEPS)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad()
        loss = torch_gpt2.loss_fn(W, ids, targets, L, NH)  # mean over all B*T tokens of the step
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(list(W.values()), OPT["grad_clip"]).item()
        opt.step()
        history.append((loss.item(), norm, lr))
    return history, {k: w.detach().numpy() for k, w in W.items()}


def compare(tag, init, tokens, run, mutant=None):
    metrics, batches, final = run
    quiet = mutant is not None
    got = [] if quiet else failures  # a mutant's failures are collected, the real run's are failures
    check(f"{tag}: one batch record and one metrics line per step", len(batches) == STEPS and len(metrics) == STEPS
          and [b["step"] for b in batches] == list(range(STEPS)), f"{len(batches)} / {len(metrics)}", quiet, got)
    if len(batches) != STEPS or len(metrics) != STEPS:
        return got
    history, ref = replay(init, tokens, batches, mutant)
    bounds = Fp32Bounds(L, C, B * T)
    loss_ratio = norm_ratio = lr_err = 0.0
    clipped, lr_budget = 0, 0.0
    for s, (m, (loss, norm, lr)) in enumerate(zip(metrics, history)):
        loss_ratio = max(loss_ratio, abs(m["loss"] - loss) / loss / bounds.loss_rel(s))
        norm_ratio = max(norm_ratio, abs(m["grad_norm"] - norm) / norm / bounds.grad_norm_rel(s))
        # Trident computes the lr from fp32 max_lr and min_lr and stores an fp32 result: one
        # rounding for the inputs, one for the output, and one more in the warm-up's product.
        lr_err = max(lr_err, abs(m["lr"] - lr) / lr)
        clipped += norm > OPT["grad_clip"]
        lr_budget += lr
    check(f"{tag}: step losses", loss_ratio < 1, f"worst at {loss_ratio:.3f} of the bound "
          f"({bounds.describe()})", quiet, got)
    check(f"{tag}: step grad norms", norm_ratio < 1, f"worst at {norm_ratio:.3f} of the bound", quiet, got)
    check(f"{tag}: learning rate of every step", lr_err <= 3 * 2 ** -24, f"max rel err {lr_err:.1e} (bound 3u = {3 * 2 ** -24:.1e})", quiet, got)
    check(f"{tag}: clipping engaged on some steps but not all", 0 < clipped < STEPS, f"{clipped} of {STEPS}",
          quiet, got)
    worst, name, exempt, bad = compare_updates(init, final, ref, C, STEPS, bounds, lr_budget)
    check(f"{tag}: final weights", not bad, f"worst update rel err {worst:.2e} ({name}), bound "
          f"{bounds.update_rel(STEPS):.2e}; zero-gradient key bias within {exempt:.2e}" +
          (f"; {bad[:3]}" if bad else ""), quiet, got)
    return [g.split(": ", 1)[1] for g in got] if quiet else []


def main():
    build = sys.argv[1]
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(20000, V, 21))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(2000, V, 22))
        tokens = read_shard(f"{d}/syn_train.bin")
        init = initial_weights(5)
        init_dir = f"{d}/init"
        os.makedirs(init_dir)
        safetensors_np.save(f"{init_dir}/model.safetensors", init)
        json.dump({"model_type": "gpt2", "n_layer": L, "n_head": NH, "n_embd": C, "n_positions": NPOS,
                   "vocab_size": V}, open(f"{init_dir}/config.json", "w"))

        single = train_with_trident(build, d, init_dir, "single", [])
        if single:
            compare("single process", init, tokens, single)
            for mutant, must_fail in MUTANTS.items():
                got = compare("single process", init, tokens, single, mutant)
                missed = [c for c in must_fail if c not in got]
                check(f"mutant {mutant} is caught", not missed, f"fails {got}" +
                      (f"; should also fail {missed}" if missed else ""))
        hybrid = train_with_trident(build, d, init_dir, "dp2_tp2_pp2_zero1",
                                    [mpirun(), "-n", "8"], ["--dp", "2", "--tp", "2", "--pp", "2", "--zero", "1"])
        if hybrid:
            compare("dp2 x tp2 x pp2, ZeRO-1", init, tokens, hybrid)
    if failures:
        print(f"{len(failures)} check(s) failed: {failures}")
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
