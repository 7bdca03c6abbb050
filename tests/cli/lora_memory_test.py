"""`trident plan` and the memory printout agree on LoRA and QLoRA runs (docs/lora.md "Memory",
plan/memory_model.h): plan --init-from BASE --lora-rank r --lora-targets ... predicts, for the layout
the run uses, exactly the bytes the run's MemoryTracker reports (peak, rank 0) in every category the
frozen base and the adapters change: parameters (the flat buffer: adapters plus every fp32 base tensor,
no packed matrix), packed_base (the q4 slices), gradients (the adapters only: 4 bytes each, single process checked
against the run's own count) and optimizer_state
(8 bytes per adapter element: AdamW holds moments for the adapters only), the workspace (which under
QLoRA adds the one fp32 layer the base is dequantized into; with dp's tied-embedding scratch, which the
run files under comm_buffers), the activations, and so the total. Single process, dp2 and tp2 (tp
slices the packed matrices), LoRA on an fp32 base and QLoRA on its q4 g32 quantization (tiny GPT-2,
n_embd 64). The planner proposes every ZeRO stage for both, and plan --lora-rank without --init-from
(or a quantized --init-from without --lora-rank) is one clear error."""
import json
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import check, finish, latest, mpirun, read_metrics, run, synthetic_tokens, trident, write_shard  # noqa: E402

VOCAB, BATCH, SEQ = 512, 8, 32
MODEL = ["--model", "tiny", "--n-embd", "64", "--vocab-size", str(VOCAB)]
LORA = ["--lora-rank", "4", "--lora-alpha", "8", "--lora-targets", "c_attn,attn.c_proj,c_fc,mlp.c_proj"]
EXACT = ("parameters", "packed_base", "gradients", "optimizer_state", "activations")


def main():
    T = trident(sys.argv[1])
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(20000, VOCAB, 3))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(2000, VOCAB, 4))
        common = ["--data", f"{d}/syn", "--batch-size", str(BATCH), "--seq-len", str(SEQ), "--eval-every", "0",
                  "--log-every", "100", "--seed", "5"]
        rc, _, err = run([T, "train"] + MODEL + ["--steps", "2", "--ckpt-dir", f"{d}/base"] + common)
        check("train a base", rc == 0, err[-600:])
        base = f"{d}/base/{latest(f'{d}/base')}"
        qdir = f"{d}/q"
        rc, out, err = run([T, "quantize", "--ckpt", base, "--out", qdir, "--format", "q4", "--group-size", "32"])
        check("quantize q4 g32", rc == 0, (out + err)[-600:])
        if failures_so_far():
            return
        for kind, src in (("lora", base), ("qlora", qdir)):
            plan_json = f"{d}/{kind}_plan.jsonl"
            rc, out, err = run([T, "plan", "--init-from", src] + LORA +
                               ["--world", "2", "--batch-size", str(BATCH), "--seq-len", str(SEQ), "--flops", "1e10",
                                "--link-gbps", "5", "--all", "--json", plan_json])
            check(f"{kind}: plan --init-from ... --lora-rank runs", rc == 0, "" if rc == 0 else (out + err)[-800:])
            if rc:
                continue
            rows = [json.loads(line) for line in open(plan_json)]
            zeros = {r["zero"] for r in rows if r["dp"] == 2}
            check(f"{kind}: plan proposes ZeRO 0-3 at dp2", zeros == {0, 1, 2, 3}, str(sorted(zeros)))
            want = f"train --init-from {src} --lora-rank 4 --lora-alpha 8 --lora-targets c_attn,attn.c_proj,c_fc,mlp.c_proj"
            check(f"{kind}: the best: line trains the same LoRA run", want in out, "" if want in out else out[-400:])
            if kind == "qlora":
                check("qlora: plan names the packed base", "frozen base packed as q4 g32" in out,
                      "" if "frozen base packed as q4 g32" in out else out[:400])
            world1 = f"{d}/{kind}_plan1.jsonl"
            rc, out, err = run([T, "plan", "--init-from", src] + LORA +
                               ["--world", "1", "--batch-size", str(BATCH), "--seq-len", str(SEQ), "--flops", "1e10",
                                "--link-gbps", "5", "--all", "--json", world1])
            rows += [json.loads(line) for line in open(world1)] if rc == 0 else []
            for tag, launch, flags, key in [("single", [], [], (1, 1, 0)),
                                            ("dp2", [mpirun(), "-n", "2"], ["--dp", "2", "--threads", "1"], (2, 1, 0)),
                                            ("tp2", [mpirun(), "-n", "2"], ["--tp", "2", "--threads", "1"], (1, 2, 0))]:
                metrics = f"{d}/{kind}_{tag}.jsonl"
                rc, _, err = run(launch + [T, "train", "--init-from", src] + LORA + flags +
                                 ["--steps", "2", "--lr", "1e-2", "--metrics", metrics] + common, timeout=600)
                if rc:
                    check(f"{kind} {tag}: the run", False, err[-800:])
                    continue
                measured = read_metrics(metrics)[-1]["memory"]
                row = next((r for r in rows if (r["dp"], r["tp"], r["zero"]) == key and r["pp"] == 1 and
                            r["micro_batches"] == 1), None)
                if row is None:
                    check(f"{kind} {tag}: plan has the layout", False, str(key))
                    continue
                planned = row["memory"]
                diff = {c: planned[c] - measured.get(c, 0) for c in EXACT}
                # The plan's workspace holds dp's scratch copy of the tied embedding gradient, which the
                # run tracks as comm_buffers; the totals are the same bytes.
                diff["workspace (+ comm_buffers)"] = planned["workspace"] - measured["workspace"] - measured["comm_buffers"]
                diff["total"] = row["memory_bytes"] - measured["total"]
                check(f"{kind} {tag}: plan's {', '.join(EXACT)}, workspace and total = the run's tracked bytes",
                      all(v == 0 for v in diff.values()) and measured["optimizer_state"] > 0 and
                      (measured["packed_base"] > 0) == (kind == "qlora"),
                      f"planned - measured {diff}; measured {measured}")
                print(f"     {kind} {tag}: total planned {row['memory_bytes']:.0f} measured {measured['total']}")
                if tag == "single":
                    # The flat gradient buffer holds the adapters only (ParamInfo::grad_offset): no
                    # slot for the frozen norms, embeddings and biases.
                    counts = re.search(r"lora: (\d+) adapter parameters trained", err)
                    adapters = int(counts.group(1)) if counts else -1
                    check(f"{kind} single: tracked gradients = 4 x the {adapters} adapter parameters",
                          measured["gradients"] == 4 * adapters, f"tracked {measured['gradients']}")
            # --async-ckpt: rank 0's snapshot holds what the checkpoint gathers (train/checkpointing.h
            # snapshot_floats, which the memory check prices): LoRA the fp32 base and the adapters plus
            # the adapters' two moments, QLoRA the adapters and their moments only (the packed base's
            # files are copied), never 12 bytes per base parameter.
            metrics = f"{d}/{kind}_async.jsonl"
            rc, _, err = run([T, "train", "--init-from", src] + LORA + ["--steps", "3", "--lr", "1e-2", "--metrics",
                             metrics, "--async-ckpt", "--ckpt-every", "1", "--ckpt-dir", f"{d}/{kind}_async"] + common)
            counts = re.search(r"lora: (\d+) adapter parameters trained on a frozen base of (\d+)", err)
            if rc or not counts:
                check(f"{kind} --async-ckpt: the run", False, err[-800:])
                continue
            adapters, base_params = int(counts.group(1)), int(counts.group(2))
            want = 4 * ((0 if kind == "qlora" else base_params) + 3 * adapters)
            snap = max(m["memory"]["ckpt_snapshot"] for m in read_metrics(metrics) if "memory" in m)
            check(f"{kind} --async-ckpt: the tracked snapshot is 4 x ({'' if kind == 'qlora' else 'base + '}3 x adapters)"
                  f" = {want} bytes", snap == want, f"tracked {snap}, 12 B per base parameter would be {12 * base_params}")
        rc, _, err = run([T, "plan", "--model", "tiny", "--world", "1", "--lora-rank", "4", "--lora-targets", "c_attn",
                          "--flops", "1e10"])
        check("plan --lora-rank without --init-from: one clear error", rc != 0 and "--init-from" in err and
              "Segmentation" not in err, err[-300:])
        rc, _, err = run([T, "plan", "--init-from", qdir, "--world", "1", "--flops", "1e10"])
        check("plan --init-from QDIR without --lora-rank: QLoRA needs adapters", rc != 0 and "--lora-rank" in err,
              err[-300:])


def failures_so_far():
    import harness
    return bool(harness.failures)


if __name__ == "__main__":
    main()
    finish()
