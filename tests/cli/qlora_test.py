"""QLoRA end to end (docs/lora.md, quant/packed_base.h): `train --init-from QDIR --lora-rank ...` on a
`trident quantize` output keeps the frozen base packed and dequantizes one layer at a time.

The reference: LoRA on `trident dequantize QDIR`, an fp32 checkpoint holding exactly the values the
packed matrices dequantize to (quant::dequantize, used by both). The two runs then multiply the same
fp32 weights with the same kernels in the same order, so every step's loss and grad norm and the
trained adapters and AdamW moments are compared bit for bit, not within a bound: single process, dp2
(ZeRO 0, 1, 2 and 3: the packed base replicated, the adapters' state sharded), tp2 and pp2. One
exception: at ZeRO 2 and 3 the grad norm is summed over each rank's gradient shard, and LoRA's
flat gradient buffer still spans its fp32 base (zeros) where QLoRA's holds the adapters only, so
the shards split the adapters at different elements and the norm's double partial sums are
added in another order: equal within 64 units of double rounding (its sum has a few thousand
terms per shard, then two shards), while the adapters, moments and losses stay bitwise, on GPT-2 (q4, group 32; n_embd 64 so tp2 splits the row-parallel inputs
into whole groups) and Llama (int8). Also: the memory printout's packed_base is the packed bytes and the
fp32 parameters shrink by 4 bytes per packed weight; the step directory holds the quantized base's files
byte for byte (never rewritten as fp32) and QDIR is untouched; a resumed QLoRA run is bitwise the
uninterrupted one; merge-lora onto the dequantized base works and onto QDIR is refused; bad input gets
one clear error each (no --lora-rank, a q4 group straddling the tp split). QLoRA at dp2 ZeRO 2 and 3
also equals ZeRO 0 within equivalence.py's bounds."""
import hashlib
import json
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from equivalence import EPS, grad_norm_bound, loss_bound  # noqa: E402
from harness import check, finish, latest, mpirun, read_metrics, run, synthetic_tokens, trident, write_shard  # noqa: E402
import safetensors_stdlib  # noqa: E402

VOCAB = 512
BATCH, SEQ, STEPS = 8, 32, 6
MODELS = {  # model flags, quantize flags, LoRA targets
    "gpt2": (["--model", "tiny", "--n-embd", "64"], ["--format", "q4", "--group-size", "32"],
             "c_attn,attn.c_proj,c_fc,mlp.c_proj"),
    "llama": (["--model", "llama-tiny"], ["--format", "int8"], "q,v,o,up,down"),
}


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def steps_of(path):
    return [(m["loss"], m["grad_norm"]) for m in read_metrics(path) if "loss" in m and "grad_norm" in m]


def main():
    T = trident(sys.argv[1])
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(20000, VOCAB, 3))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(2000, VOCAB, 4))
        common = ["--data", f"{d}/syn", "--batch-size", str(BATCH), "--seq-len", str(SEQ), "--eval-every", "0",
                  "--log-every", "100", "--seed", "5"]
        for name, (model, qflags, targets) in MODELS.items():
            base_dir = f"{d}/{name}_base"
            rc, _, err = run([T, "train"] + model + ["--vocab-size", str(VOCAB), "--steps", "10", "--lr", "1e-2",
                                                     "--ckpt-dir", base_dir] + common)
            check(f"{name}: train a base", rc == 0, err[-600:])
            if rc:
                continue
            base = f"{base_dir}/{latest(base_dir)}"
            qdir, deq = f"{d}/{name}_q", f"{d}/{name}_deq"
            rc, out, err = run([T, "quantize", "--ckpt", base, "--out", qdir] + qflags)
            check(f"{name}: quantize", rc == 0, (out + err)[-600:])
            rc, out, err = run([T, "dequantize", "--ckpt", qdir, "--out", deq])
            check(f"{name}: dequantize", rc == 0, (out + err)[-600:])
            if rc:
                continue
            qdir_files = {f: digest(f"{qdir}/{f}") for f in ("model.safetensors", "config.json")}
            lora = ["train", "--lora-rank", "4", "--lora-alpha", "8", "--lora-targets", targets, "--steps", str(STEPS),
                    "--lr", "1e-2", "--lr-schedule", "constant", "--eps", str(EPS)] + common

            def pair(tag, launch, extra, norm_ulps=0):
                """QLoRA on QDIR and LoRA on its dequantized copy in one layout; (ok, detail, qlora stderr)."""
                out = {}
                for kind, src in (("q", qdir), ("f", deq)):
                    tagged = f"{d}/{name}_{tag}_{kind}"
                    rc, _, err = run(launch + [T] + lora + extra + ["--init-from", src, "--metrics", f"{tagged}.jsonl",
                                                                    "--ckpt-dir", tagged], timeout=900)
                    if rc:
                        return False, f"{kind} run failed: {err[-1200:]}", err
                    out[kind] = (steps_of(f"{tagged}.jsonl"), f"{tagged}/{latest(tagged)}", err)
                (sq, dq, errq), (sf, df, _) = out["q"], out["f"]
                tensors = {}
                for f in ("adapter_model.safetensors", "optimizer.safetensors"):
                    a, b = safetensors_stdlib.load(f"{dq}/{f}"), safetensors_stdlib.load(f"{df}/{f}")
                    tensors[f] = a == b and len(a) > 0
                losses_equal = [a[0] for a in sq] == [b[0] for b in sf]
                norms_equal = all(abs(a[1] - b[1]) <= norm_ulps * 2.0 ** -53 * abs(b[1]) for a, b in zip(sq, sf))
                ok = len(sq) == STEPS and len(sf) == STEPS and losses_equal and norms_equal and all(tensors.values())
                return ok, f"qlora {sq[:2]}.. lora {sf[:2]}.., tensors equal {tensors}", errq

            ok, detail, qerr = pair("single", [], [])
            check(f"{name}: QLoRA == LoRA on the dequantized base, bitwise (loss, grad norm, adapters, moments)",
                  ok, detail)
            if not ok:
                continue
            step_dir = f"{d}/{name}_single_q/{latest(f'{d}/{name}_single_q')}"
            same = all(digest(f"{step_dir}/{f}") == h for f, h in qdir_files.items())
            untouched = all(digest(f"{qdir}/{f}") == h for f, h in qdir_files.items())
            check(f"{name}: the step directory holds the quantized base byte for byte; QDIR untouched",
                  same and untouched, f"copy equal {same}, QDIR untouched {untouched}")
            rc, out, err = run([T, "ckpt", "info", step_dir])
            check(f"{name}: ckpt info reads the QLoRA step directory as quantized", rc == 0 and "quantized" in out,
                  (out + err)[-400:])
            # Memory: the packed bytes are their own category; the fp32 parameters lose 4 B per packed weight.
            mq = read_metrics(f"{d}/{name}_single_q.jsonl")[0]["memory"]
            mf = read_metrics(f"{d}/{name}_single_f.jsonl")[0]["memory"]
            packed = re.search(r"qlora: frozen base's (\d+) layer-matrix parameters packed as \S+( g\d+)?: ([0-9.]+) bytes",
                               qerr)
            n_packed = int(packed.group(1)) if packed else 0
            check(f"{name}: memory printout: packed_base holds the packed base, fp32 parameters shrink by 4 B/weight",
                  packed is not None and 0 < float(packed.group(3)) < 1.2 and
                  abs(mq["packed_base"] - float(packed.group(3)) * n_packed) <= 1e-3 * n_packed and
                  mf["parameters"] - mq["parameters"] == 4 * n_packed and mf.get("packed_base", 0) == 0,
                  f"qlora {mq}, lora {mf}, printout {packed.group(0) if packed else qerr[-300:]}")
            for tag, launch, extra in [("dp2", [mpirun(), "-n", "2"], ["--dp", "2", "--threads", "1"]),
                                       ("dp2_zero1", [mpirun(), "-n", "2"], ["--dp", "2", "--zero", "1", "--threads", "1"]),
                                       ("dp2_zero2", [mpirun(), "-n", "2"], ["--dp", "2", "--zero", "2", "--threads", "1"]),
                                       ("dp2_zero3", [mpirun(), "-n", "2"], ["--dp", "2", "--zero", "3", "--threads", "1"]),
                                       ("tp2", [mpirun(), "-n", "2"], ["--tp", "2", "--threads", "1"]),
                                       ("pp2", [mpirun(), "-n", "2"], ["--pp", "2", "--grad-accum", "2", "--threads", "1"])]:
                ok, detail, _ = pair(tag, launch, extra, 64 if "zero2" in tag or "zero3" in tag else 0)
                check(f"{name}: QLoRA {tag} == LoRA {tag} on the dequantized base, bitwise" + (" (the grad norm to double rounding)" if "zero2" in tag or "zero3" in tag else ""), ok, detail)
            # ZeRO 2/3 shard the adapters' state only (the packed base replicated): against ZeRO-0 at dp2,
            # dp2's two-term sums are the same whatever the stage, so only the grad norm's sum over the
            # shards is reordered: losses and grad norms within equivalence.py's bounds.
            z0 = steps_of(f"{d}/{name}_dp2_q.jsonl")
            for stage in (2, 3):
                zs = steps_of(f"{d}/{name}_dp2_zero{stage}_q.jsonl")
                ok = len(zs) == len(z0) == STEPS and all(
                    abs(a[0] - b[0]) <= loss_bound(k + 1, BATCH, SEQ, VOCAB) * abs(b[0]) and
                    abs(a[1] - b[1]) <= grad_norm_bound(k + 1, BATCH, SEQ) * abs(b[1])
                    for k, (a, b) in enumerate(zip(zs, z0)))
                check(f"{name}: QLoRA dp2 ZeRO {stage} = ZeRO 0 within equivalence.py's bounds", ok,
                      f"zero{stage} {zs[:2]} zero0 {z0[:2]}")
            # Resume: half, then --resume, equals the uninterrupted run.
            half = f"{d}/{name}_half"
            rc, _, err = run([T] + lora + ["--init-from", qdir, "--ckpt-dir", half, "--stop-after", str(STEPS // 2)])
            rc2, _, err2 = run([T, "train", "--resume", half])
            same = rc == 0 and rc2 == 0 and all(
                safetensors_stdlib.load(f"{half}/{latest(half)}/{f}") == safetensors_stdlib.load(f"{step_dir}/{f}")
                for f in ("adapter_model.safetensors", "optimizer.safetensors"))
            check(f"{name}: a resumed QLoRA run is bitwise the uninterrupted one", same, (err + err2)[-800:])
            # merge-lora: onto the dequantized base works; onto QDIR is refused with the recipe.
            rc, out, err = run([T, "merge-lora", "--base", deq, "--adapter", step_dir, "--out", f"{d}/{name}_merged"])
            check(f"{name}: merge-lora of a QLoRA adapter onto the dequantized base", rc == 0, (out + err)[-400:])
            rc, _, err = run([T, "merge-lora", "--base", qdir, "--adapter", step_dir, "--out", f"{d}/{name}_m2"])
            check(f"{name}: merge-lora onto the quantized base: clear error", rc != 0 and "trident dequantize" in err,
                  err[-400:])
        # Bad input: one clear error each.
        qdir = f"{d}/gpt2_q"
        bad = [([T, "train", "--init-from", qdir, "--steps", "1"] + common, "needs --lora-rank")]
        # tiny GPT-2 (n_embd 32) at q4 g32: tp2 gives attn.c_proj 16 inputs per rank, half a group.
        rc, _, err = run([T, "train", "--model", "tiny", "--vocab-size", str(VOCAB), "--steps", "1",
                          "--ckpt-dir", f"{d}/t32"] + common)
        rc2, _, err2 = run([T, "quantize", "--ckpt", f"{d}/t32", "--out", f"{d}/t32q", "--format", "q4",
                            "--group-size", "32"])
        check("bad input: a tiny q4 g32 base", rc == 0 and rc2 == 0, (err + err2)[-400:])
        bad.append(([mpirun(), "-n", "2", T, "train", "--init-from", f"{d}/t32q", "--steps", "1", "--lora-rank", "4",
                     "--lora-targets", "attn.c_proj", "--tp", "2", "--threads", "1"] + common, "straddle"))
        run_err = ""
        for cmd, needle in bad:
            launch = [c for c in cmd if c in ("--zero", "--tp")]
            if "--zero" in launch:
                cmd = [mpirun(), "-n", "2"] + cmd
            rc, _, err = run(cmd)
            check(f"bad input ({needle}): clear error", rc != 0 and needle in err and "Segmentation" not in err,
                  err[-500:])
            if needle == "straddle":
                run_err = err
        # trident plan applies the run's rule (quant::check_packed_tp_split, the function the load's
        # slice check calls): tp2 of the same QLoRA run is not proposed, and the reason is printed.
        rc, out, err = run([T, "plan", "--init-from", f"{d}/t32q", "--lora-rank", "4", "--lora-targets", "attn.c_proj",
                            "--world", "2", "--batch-size", "8", "--seq-len", "32", "--flops", "1e10",
                            "--link-gbps", "5", "--all", "--json", f"{d}/t32q_plan.jsonl"])
        rows = [json.loads(line) for line in open(f"{d}/t32q_plan.jsonl")] if rc == 0 else []
        rule = "h.0.attn.c_proj.weight: its q4 groups of 32 inputs straddle the tensor-parallel split"
        check("plan of a q4 g32 QLoRA base at world 2: no tp2 layout, dp2 ones remain",
              rc == 0 and rows and all(r["tp"] == 1 for r in rows) and any(r["dp"] == 2 for r in rows),
              (out + err)[-600:] if rc else str([(r["dp"], r["tp"]) for r in rows]))
        not_valid = out[out.find("not valid:"):] if "not valid:" in out else ""
        check("plan prints the run's own reason for tp2 (the same error text as train's)",
              rule in not_valid and rule in run_err, f"plan: {not_valid[:500]!r} run: {run_err[-300:]!r}")
    finish()


if __name__ == "__main__":
    main()
