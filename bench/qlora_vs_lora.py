"""QLoRA vs LoRA in one invocation (docs/lora.md "QLoRA"): a base of PRESET (random init, saved after one
step), quantized (q4, group 64, or --format int8) and dequantized (`trident dequantize`); then LoRA on the
dequantized fp32 checkpoint and QLoRA on the quantized one, the same adapters, data and steps, run
alternately (LoRA, QLoRA, LoRA, QLoRA, ...) so a shared machine's load hits both alike. Prints, per
run and as QLoRA / LoRA ratios: the tracked memory (total, parameters, packed_base), the peak RSS of
the process (getrusage of the child), and the median step time after the first step.

  python3 bench/qlora_vs_lora.py build [--model llama-small] [--steps 6] [--format q4] [--repeats 2]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "cli"))
from harness import latest, synthetic_tokens, write_shard  # noqa: E402

TARGETS = {"llama": "q,k,v,o,gate,up,down", "gpt2": "c_attn,attn.c_proj,c_fc,mlp.c_proj"}


def child(cmd):
    """Runs cmd (output discarded); returns that child's own peak RSS in bytes (wait4's rusage)."""
    pid = os.fork()
    if pid == 0:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.execv(cmd[0], cmd)
    _, status, usage = os.wait4(pid, 0)
    if status != 0:
        sys.exit(f"{' '.join(cmd)} failed (status {status}); rerun it by hand to see why")
    return usage.ru_maxrss * 1024  # Linux: KiB


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--model", default="llama-small")
    ap.add_argument("--format", default="q4", choices=["q4", "int8"])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    T = os.path.join(a.build, "trident")
    family = "llama" if a.model.startswith("llama") else "gpt2"
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(200000, 50257, 3))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(2000, 50257, 4))
        data = ["--data", f"{d}/syn", "--batch-size", "4", "--seq-len", "128", "--eval-every", "0",
                "--threads", str(a.threads), "--log-every", "1000"]
        subprocess.run([T, "train", "--model", a.model, "--steps", "1", "--ckpt-dir", f"{d}/base"] + data,
                       check=True, capture_output=True)
        base = f"{d}/base/{latest(f'{d}/base')}"
        q = ["--format", a.format] + (["--group-size", "64"] if a.format == "q4" else [])
        subprocess.run([T, "quantize", "--ckpt", base, "--out", f"{d}/q"] + q, check=True, capture_output=True)
        subprocess.run([T, "dequantize", "--ckpt", f"{d}/q", "--out", f"{d}/deq"], check=True, capture_output=True)
        lora = [T, "train", "--lora-rank", "8", "--lora-targets", TARGETS[family], "--steps", str(a.steps),
                "--lr", "1e-3"] + data
        res = {"lora": [], "qlora": []}
        for rep in range(a.repeats):
            for kind, src in (("lora", f"{d}/deq"), ("qlora", f"{d}/q")):
                m = f"{d}/{kind}{rep}.jsonl"
                rss = child(lora + ["--init-from", src, "--metrics", m])
                rows = [json.loads(line) for line in open(m) if '"step_ms"' in line]
                res[kind].append({"rss": rss, "step_ms": statistics.median(r["step_ms"] for r in rows[1:]),
                                  "memory": rows[-1]["memory"]})
        print(f"{a.model}, LoRA r 8 on {TARGETS[family]}, batch 4 x 128, {a.steps} steps, {a.threads} threads, "
              f"base {a.format}{' g64' if a.format == 'q4' else ''}; runs alternated, {a.repeats} each")
        print(f"{'':8} {'tracked total':>14} {'parameters':>12} {'packed_base':>12} {'gradients':>12} "
              f"{'peak RSS':>10} {'step ms':>9}")
        summary = {}
        for kind in ("lora", "qlora"):
            r = res[kind]
            mem = r[-1]["memory"]
            s = {"total": mem["total"], "parameters": mem["parameters"], "packed": mem.get("packed_base", 0),
                 "gradients": mem["gradients"], "rss": min(x["rss"] for x in r),
                 "step_ms": statistics.median(x["step_ms"] for x in r)}
            summary[kind] = s
            print(f"{kind:8} {s['total'] / 2**20:11.1f} MiB {s['parameters'] / 2**20:8.1f} MiB "
                  f"{s['packed'] / 2**20:8.1f} MiB {s['gradients'] / 2**20:8.1f} MiB {s['rss'] / 2**20:6.0f} MiB "
                  f"{s['step_ms']:9.0f}")
        lo, ql = summary["lora"], summary["qlora"]
        print(f"QLoRA / LoRA: tracked total {ql['total'] / lo['total']:.3f}, parameters "
              f"{ql['parameters'] / lo['parameters']:.3f}, peak RSS {ql['rss'] / lo['rss']:.3f}, "
              f"step time {ql['step_ms'] / lo['step_ms']:.3f}")


if __name__ == "__main__":
    main()
