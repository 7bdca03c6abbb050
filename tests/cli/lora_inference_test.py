"""`trident eval` and `generate` with LoRA adapters applied unmerged (infer/lora_apply.h, docs/lora.md):
a LoRA step directory as --ckpt (its base plus its adapters), --adapter DIR on top of the base, and a
QLoRA step directory (the q4 base packed, computed by the packed kernels, plus its adapters).

Reference: merge-lora's merged model (for QLoRA: merged into `trident dequantize`'s values). The two
differ by the merge's rounding of W' = W + s B A (u |W'| per weight) and by two different fp32 products
(sgemm or the q4 kernel, each within n u sum|x||w| for a reduction of n): the nn_lora_test bound
D (n + r + 1) u max|logit| on the logits (D layers, n the widest reduction, r the rank, u = 2^-24), so
the loss, logsumexp(z) - z_target, moves by at most twice that. Also: the adapters change the loss (the
base alone differs), --adapter on the base equals the step directory exactly (the same computation),
greedy generation gives the merged model's tokens; bad input: an adapter of another family, of another
shape, a directory without adapter files, --adapter on a step directory that holds its own."""
import json
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import check, finish, latest, run, synthetic_tokens, trident, write_shard  # noqa: E402

VOCAB, BATCH, SEQ = 512, 8, 32
MODEL = ["--model", "tiny", "--n-embd", "64", "--vocab-size", str(VOCAB)]  # 8 layers, widest reduction 4 x 64
LAYERS, WIDEST, RANK = 8, 256, 4
LORA = ["--lora-rank", str(RANK), "--lora-alpha", "8", "--lora-targets", "c_attn,attn.c_proj,c_fc,mlp.c_proj"]
U = 2.0 ** -24


def main():
    T = trident(sys.argv[1])
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(20000, VOCAB, 3))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(2000, VOCAB, 4))
        val = f"{d}/syn_val.bin"
        common = ["--data", f"{d}/syn", "--batch-size", str(BATCH), "--seq-len", str(SEQ), "--eval-every", "0",
                  "--log-every", "100", "--seed", "5"]

        def train(out, *flags):
            rc, _, err = run([T, "train"] + list(flags) + common + ["--ckpt-dir", out])
            check(f"train {os.path.basename(out)}", rc == 0, "" if rc == 0 else err[-600:])
            return f"{out}/{latest(out)}" if rc == 0 else None

        def evaluate(*flags):
            rc, out, err = run([T, "eval", "--data", val, "--seq-len", str(SEQ)] + list(flags))
            return (json.loads(out.strip().splitlines()[-1]) if rc == 0 else None), out + err

        def generate(*flags):
            rc, out, err = run([T, "generate", "--max-new-tokens", "24", "--temperature", "0", "--print-ids"] +
                               list(flags))
            ids = re.search(r"generated ids: (.*)", err)
            return (ids.group(1) if rc == 0 and ids else None), err

        base = train(f"{d}/base", *MODEL, "--steps", "10", "--lr", "1e-2")
        if base is None:
            return
        step = train(f"{d}/lora", "--init-from", base, *LORA, "--steps", "8", "--lr", "2e-2")
        qdir, deq = f"{d}/q", f"{d}/deq"
        rc, out, err = run([T, "quantize", "--ckpt", base, "--out", qdir, "--format", "q4", "--group-size", "32"])
        rc2, out2, err2 = run([T, "dequantize", "--ckpt", qdir, "--out", deq])
        check("quantize, dequantize", rc == 0 and rc2 == 0, "" if rc == rc2 == 0 else (out + err + out2 + err2)[-600:])
        qstep = train(f"{d}/qlora", "--init-from", qdir, *LORA, "--steps", "8", "--lr", "2e-2")
        if step is None or qstep is None or rc or rc2:
            return
        cases = [("LoRA", step, base), ("QLoRA (q4 g32 base, packed kernels)", qstep, deq)]
        for name, st, merge_base in cases:
            merged = f"{d}/merged_{len(name)}"
            rc, out, err = run([T, "merge-lora", "--base", merge_base, "--adapter", st, "--out", merged])
            check(f"{name}: merge-lora", rc == 0, "" if rc == 0 else (out + err)[-400:])
            un, text = evaluate("--ckpt", st)
            mg, text2 = evaluate("--ckpt", merged)
            if un is None or mg is None:
                check(f"{name}: eval of the step directory and of the merged model", False, (text + text2)[-800:])
                continue
            bound = 2 * LAYERS * (WIDEST + RANK + 1) * U * max(un["max_abs_logit"], mg["max_abs_logit"])
            delta = abs(un["val_loss"] - mg["val_loss"])
            check(f"{name}: eval applies the step directory's adapters ('lora: N adapters ... unmerged')",
                  re.search(r"lora: 32 adapters of \S+ applied unmerged \(r 4, alpha 8", text) is not None,
                  "" if "applied unmerged" in text else text[-400:])
            check(f"{name}: unmerged val_loss = merged within 2 D (n + r + 1) u max|logit| = {bound:.2e}",
                  delta <= bound, f"unmerged {un['val_loss']:.8f} merged {mg['val_loss']:.8f} |diff| {delta:.2e}")
            print(f"     {name}: |unmerged - merged| val_loss {delta:.2e} (bound {bound:.2e})")
            g_un, e1 = generate("--ckpt", st)
            g_mg, e2 = generate("--ckpt", merged)
            check(f"{name}: greedy generate with the adapters = the merged model's tokens",
                  g_un is not None and g_un == g_mg, "" if g_un is not None and g_un == g_mg else
                  f"{g_un} vs {g_mg} {(e1 + e2)[-300:]}")
        plain, text = evaluate("--ckpt", base)
        on_base, text2 = evaluate("--ckpt", base, "--adapter", step)
        own, _ = evaluate("--ckpt", step)
        check("--adapter STEP on the base = the step directory's own adapters, exactly",
              on_base is not None and own is not None and on_base["val_loss"] == own["val_loss"],
              f"{on_base and on_base['val_loss']} vs {own and own['val_loss']}")
        check("the adapters change the loss (the base alone differs)",
              plain is not None and own is not None and plain["val_loss"] != own["val_loss"] and plain["lora"] == "none",
              f"base {plain and plain['val_loss']} adapted {own and own['val_loss']}")
        g_base, _ = generate("--ckpt", base, "--adapter", step)
        g_own, _ = generate("--ckpt", step)
        check("generate --adapter on the base = generate of the step directory", g_base is not None and g_base == g_own)

        # Bad input: one clear error each, nothing evaluated.
        other = train(f"{d}/llama", "--model", "llama-tiny", "--vocab-size", str(VOCAB), "--steps", "1")
        lstep = train(f"{d}/llama_lora", "--init-from", other, "--lora-rank", "2", "--lora-targets", "q,v",
                      "--steps", "1") if other else None
        narrow = train(f"{d}/narrow", "--model", "tiny", "--vocab-size", str(VOCAB), "--steps", "1")
        nstep = train(f"{d}/narrow_lora", "--init-from", narrow, *LORA, "--steps", "1") if narrow else None
        for what, flags, needle in [
                ("an adapter of another family", ["--ckpt", base, "--adapter", lstep or "x"], "not a gpt2 LoRA target"),
                ("an adapter of another shape", ["--ckpt", base, "--adapter", nstep or "x"], "another model shape"),
                ("a directory without adapter files", ["--ckpt", base, "--adapter", base], "holds no adapter_config.json"),
                ("--adapter on a step directory holding its own", ["--ckpt", step, "--adapter", step],
                 "holds its own adapters")]:
            for cmd in ("eval", "generate"):
                extra = ["--data", val, "--seq-len", str(SEQ)] if cmd == "eval" else ["--max-new-tokens", "2"]
                rc, out, err = run([T, cmd] + flags + extra)
                check(f"{cmd}, bad input {what}: one clear error", rc != 0 and needle in err and
                      "Segmentation" not in err and "val_loss" not in out, err[-300:])


if __name__ == "__main__":
    main()
    finish()
