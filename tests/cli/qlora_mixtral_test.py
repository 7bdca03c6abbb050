"""QLoRA on a Mixtral base (docs/lora.md "QLoRA"): mixtral-tiny (4 experts of width 64, top-2) quantized to
q4 g32, then LoRA on the attention (q, v, o) over the frozen packed base: the experts' matrices are
packed like any layer matrix and dequantized with their layer group, the router stays fp32
(ParamDecl::keep_fp32).

As cli.qlora_test does for GPT-2 and Llama, the reference is LoRA on `trident dequantize`'s copy of the
q4 base: the same fp32 weights through the same kernels, so losses, grad norms, adapters and AdamW
moments are compared bit for bit, single process and at dp2 x ep2 (the experts split over two ranks,
each holding its experts' packed slices). Also: LoRA at dp2 x ep2 against dp2 x ep1 (the same global
batch; ep only moves where expert rows are summed) within equivalence.py's bounds on the loss and the
grad norm, as the other ep tests compare; eval runs the QLoRA step directory (the packed q4 experts with
the adapters unmerged) and merge-lora of its adapters into the dequantized base gives the same loss within
the cli.lora_inference_test bound."""
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from equivalence import EPS, grad_norm_bound, loss_bound, weight_bound  # noqa: E402
from harness import check, finish, latest, mpirun, read_metrics, run, synthetic_tokens, trident, write_shard  # noqa: E402
import safetensors_stdlib  # noqa: E402

VOCAB, BATCH, SEQ, STEPS = 512, 8, 32, 4
MODEL = ["--model", "mixtral-tiny", "--n-inner", "64", "--vocab-size", str(VOCAB)]
LAYERS, WIDEST, RANK = 4, 64, 4
U = 2.0 ** -24


def steps_of(path):
    return [(m["loss"], m["grad_norm"]) for m in read_metrics(path) if "loss" in m and "grad_norm" in m]


def main():
    T = trident(sys.argv[1])
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(20000, VOCAB, 3))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(2000, VOCAB, 4))
        common = ["--data", f"{d}/syn", "--batch-size", str(BATCH), "--seq-len", str(SEQ), "--eval-every", "0",
                  "--log-every", "100", "--seed", "5"]
        rc, _, err = run([T, "train"] + MODEL + ["--steps", "6", "--lr", "1e-2", "--ckpt-dir", f"{d}/base"] + common)
        check("train a mixtral-tiny base", rc == 0, err[-600:])
        if rc:
            return
        base = f"{d}/base/{latest(f'{d}/base')}"
        qdir, deq = f"{d}/q", f"{d}/deq"
        rc, out, err = run([T, "quantize", "--ckpt", base, "--out", qdir, "--format", "q4", "--group-size", "32"])
        rc2, out2, err2 = run([T, "dequantize", "--ckpt", qdir, "--out", deq])
        check("quantize mixtral-tiny to q4 g32 (experts packed, router fp32), dequantize", rc == 0 and rc2 == 0,
              (out + err + out2 + err2)[-600:])
        if rc or rc2:
            return
        lora = ["train", "--lora-rank", str(RANK), "--lora-alpha", "8", "--lora-targets", "q,v,o", "--steps", str(STEPS),
                "--lr", "1e-2", "--lr-schedule", "constant", "--eps", str(EPS)] + common

        def train(tag, src, launch, extra):
            out = f"{d}/{tag}"
            rc, _, err = run(launch + [T] + lora + extra + ["--init-from", src, "--metrics", f"{out}.jsonl",
                                                            "--ckpt-dir", out], timeout=900)
            check(f"{tag}: the run", rc == 0, "" if rc == 0 else err[-1200:])
            return (steps_of(f"{out}.jsonl"), f"{out}/{latest(out)}", err) if rc == 0 else None

        ep2 = [mpirun(), "-n", "2"], ["--dp", "2", "--ep", "2", "--threads", "1"]
        runs = {"q1": train("qlora_single", qdir, [], []), "f1": train("lora_single", deq, [], []),
                "q2": train("qlora_dp2_ep2", qdir, *ep2), "f2": train("lora_dp2_ep2", deq, *ep2),
                "f2e1": train("lora_dp2_ep1", deq, [mpirun(), "-n", "2"], ["--dp", "2", "--threads", "1"])}
        if any(v is None for v in runs.values()):
            return
        packed = "qlora: frozen base's" in runs["q1"][2] and " packed as q4 g32" in runs["q1"][2]
        check("the QLoRA run packs the Mixtral base (experts included) as q4 g32", packed, runs["q1"][2][-400:])
        for q, f, what in (("q1", "f1", "single process"), ("q2", "f2", "dp2 x ep2")):
            (sq, dq, _), (sf, df, _) = runs[q], runs[f]
            tensors = {name: safetensors_stdlib.load(f"{dq}/{name}") == safetensors_stdlib.load(f"{df}/{name}")
                       for name in ("adapter_model.safetensors", "optimizer.safetensors")}
            check(f"Mixtral QLoRA {what} == LoRA on the dequantized base, bitwise (loss, grad norm, adapters, moments)",
                  len(sq) == STEPS and sq == sf and all(tensors.values()), f"qlora {sq[:2]} lora {sf[:2]} {tensors}")
        # ep2 against ep1 at dp2: the same tokens and routing; the expert rows are summed on another rank.
        e2, e1 = runs["f2"][0], runs["f2e1"][0]
        ok = len(e2) == len(e1) == STEPS and all(
            abs(a[0] - b[0]) <= loss_bound(k + 1, BATCH, SEQ, VOCAB) * abs(b[0]) and
            abs(a[1] - b[1]) <= grad_norm_bound(k + 1, BATCH, SEQ) * abs(b[1]) for k, (a, b) in enumerate(zip(e2, e1)))
        check("Mixtral LoRA dp2 x ep2 = dp2 x ep1 within equivalence.py's bounds (loss, grad norm)", ok,
              f"ep2 {e2} ep1 {e1}")
        # Not bitwise: each expert multiplies another set of token rows at ep2 (both dp ranks' tokens routed
        # to it) than at ep1, and a matmul of another row count may sum in another order (likely; which
        # operation reorders was not traced); so every
        # token's activations and gradients move by fp32 rounding. The adapters (the trained weights) are
        # then held to the weight bound the layout tests use (equivalence.py: sum over steps of
        # lr eta g_rms / eps, eta = u sqrt(B T), g_rms = grad_norm / sqrt(N)), and their moments, which
        # are weighted sums of those gradients, to the same per-element gradient perturbation: exp_avg by
        # sum_k eta g_rms_k, exp_avg_sq by sum_k (1 - beta2) 2 g_max_k eta g_rms_k (d g^2 = 2 g dg, g_max
        # <= the grad norm).
        a2 = safetensors_stdlib.load(f"{runs['f2'][1]}/adapter_model.safetensors")
        a1 = safetensors_stdlib.load(f"{runs['f2e1'][1]}/adapter_model.safetensors")
        m2 = safetensors_stdlib.load(f"{runs['f2'][1]}/optimizer.safetensors")
        m1 = safetensors_stdlib.load(f"{runs['f2e1'][1]}/optimizer.safetensors")
        n = sum(len(v) for v in a1.values())
        norms = [g for _, g in e1]
        eta = U * (BATCH * SEQ) ** 0.5
        bounds = {"adapters": weight_bound(norms, n, 1e-2, BATCH, SEQ, EPS),
                  "exp_avg": sum(eta * g / n ** 0.5 for g in norms),
                  "exp_avg_sq": sum((1 - 0.95) * 2 * g * eta * g / n ** 0.5 for g in norms)}
        devs = {"adapters": max(abs(x - y) for k in a1 for x, y in zip(a2[k], a1[k])),
                "exp_avg": max(abs(x - y) for k in m1 if k.endswith(".exp_avg") for x, y in zip(m2[k], m1[k])),
                "exp_avg_sq": max(abs(x - y) for k in m1 if k.endswith(".exp_avg_sq") for x, y in zip(m2[k], m1[k]))}
        for what in bounds:
            check(f"Mixtral LoRA dp2 x ep2 = dp2 x ep1: {what} within {bounds[what]:.2e} absolute",
                  devs[what] <= bounds[what], f"largest deviation {devs[what]:.3e}")
            print(f"     {what}: ep2 vs ep1 largest deviation {devs[what]:.3e} (bound {bounds[what]:.3e})")
        # Inference on the packed Mixtral base with the adapters unmerged = the merged fp32 model.
        step = runs["q1"][1]
        merged = f"{d}/merged"
        rc, out, err = run([T, "merge-lora", "--base", deq, "--adapter", step, "--out", merged])
        check("merge-lora of the QLoRA adapters into the dequantized Mixtral base", rc == 0, (out + err)[-400:])
        evals = {}
        for tag, ck in (("unmerged", step), ("merged", merged)):
            rc, out, err = run([T, "eval", "--ckpt", ck, "--data", f"{d}/syn_val.bin", "--seq-len", str(SEQ)])
            evals[tag] = json.loads(out.strip().splitlines()[-1]) if rc == 0 else None
            check(f"eval of the {tag} Mixtral model", rc == 0, (out + err)[-400:])
        if evals["unmerged"] and evals["merged"]:
            un, mg = evals["unmerged"], evals["merged"]
            bound = 2 * LAYERS * (WIDEST + RANK + 1) * U * max(un["max_abs_logit"], mg["max_abs_logit"])
            delta = abs(un["val_loss"] - mg["val_loss"])
            check(f"QLoRA Mixtral: unmerged val_loss = merged within 2 D (n + r + 1) u max|logit| = {bound:.2e}",
                  un["lora"] != "none" and delta <= bound, f"{un['val_loss']} vs {mg['val_loss']} ({delta:.2e})")
            print(f"     |unmerged - merged| val_loss {delta:.2e} (bound {bound:.2e})")


if __name__ == "__main__":
    main()
    finish()
