#!/usr/bin/env python3
"""Mixture-of-experts training throughput against the dense model of equal active parameters
(issue 15), all in one invocation on 8 ranks:

  mixtral-small (llama-small's attention, 8 experts of width 512, top-2: 2 x 512 active per token)
  at dp 8 with ep 1, 2 and 4, and llama-small (one SwiGLU of width 1024, the same active MLP
  width and the same attention) at dp 8, on the same data, batch and sequence length.

Runs alternate round by round (ep 1, ep 2, ep 4, dense, then again), so machine load that drifts
is shared; each run's tokens/s is the median over its steps after the first (warm-up). Prints
each configuration's median over rounds and its ratio to the dense model, plus the MoE runs'
expert load (fewest / most tokens an expert got) to show how balanced routing was.

  python3 bench/moe_throughput.py [--build build] [--data data/janeausten] [--steps 6]
      [--rounds 2] [--batch-size 16] [--seq-len 64] [--eps 1,2,4] [--ranks 8]

The data defaults to the prepared Austen corpus (`trident prepare --corpus janeausten`);
without it, synthetic tokens are written to a temporary directory. A benchmark, not a test.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "cli"))
from harness import synthetic_tokens, write_shard  # noqa: E402


def run_one(args, model, ep, data, metrics):
    cmd = [os.path.join(REPO, "scripts", "trident-mpirun"), "-n", str(args.ranks),
           os.path.join(args.build, "trident"), "train", "--model", model, "--data", data,
           "--dp", str(args.ranks), "--ep", str(ep), "--batch-size", str(args.batch_size),
           "--seq-len", str(args.seq_len), "--steps", str(args.steps), "--eval-every", "0",
           "--threads", "1", "--log-every", "1000", "--lr", "1e-3", "--metrics", metrics]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"error: {model} ep {ep} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    rows = [json.loads(line) for line in open(metrics)]
    if len(rows) < 2:
        sys.exit(f"error: {model} ep {ep} wrote {len(rows)} metrics lines; give --steps >= 2")
    tps = statistics.median(r["tokens_per_s"] for r in rows[1:])
    load = rows[-1].get("expert_load")
    return tps, load


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(REPO, "build"))
    ap.add_argument("--data", default=os.path.join(REPO, "data", "janeausten"))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--eps", default="1,2,4")
    ap.add_argument("--ranks", type=int, default=8)
    args = ap.parse_args()
    try:
        eps = [int(e) for e in args.eps.split(",")]
    except ValueError:
        sys.exit(f"error: --eps {args.eps!r} is not a comma-separated list of integers (e.g. 1,2,4)")
    bad = [e for e in eps if e < 1 or args.ranks % e or 8 % e]
    if bad:
        sys.exit(f"error: --eps {bad} must divide both --ranks {args.ranks} (dp) and mixtral-small's 8 experts")
    if args.steps < 2 or args.rounds < 1:
        sys.exit("error: --steps must be >= 2 (the first is warm-up) and --rounds >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if not os.path.exists(data + "_train.bin"):
            print(f"{data}_train.bin not found: synthetic tokens instead (vocabulary 50257)")
            data = os.path.join(tmp, "syn")
            write_shard(data + "_train.bin", synthetic_tokens(200000, 50257, 1))
            write_shard(data + "_val.bin", synthetic_tokens(20000, 50257, 2))
        configs = [("mixtral-small", e) for e in eps] + [("llama-small", 1)]
        tps = {c: [] for c in configs}
        loads = {}
        for r in range(args.rounds):
            for model, ep in configs:
                t, load = run_one(args, model, ep, data, os.path.join(tmp, "m.jsonl"))
                tps[(model, ep)].append(t)
                if load:
                    loads[(model, ep)] = load
                print(f"round {r + 1}: {model:13s} ep {ep}: {t:8.0f} tokens/s", flush=True)
    dense = statistics.median(tps[("llama-small", 1)])
    print(f"\n{args.ranks} ranks, dp {args.ranks}, global batch {args.batch_size} x {args.seq_len}, "
          f"{args.steps} steps a run (first dropped), {args.rounds} round(s), median over rounds:")
    print(f"  llama-small (dense, MLP 1024)       : {dense:8.0f} tokens/s  1.00x")
    for e in eps:
        m = statistics.median(tps[("mixtral-small", e)])
        lo, hi = loads[("mixtral-small", e)]["min"], loads[("mixtral-small", e)]["max"]
        print(f"  mixtral-small ep {e} (8 x 512, top-2): {m:8.0f} tokens/s  {m / dense:.2f}x of dense; "
              f"last step's expert load min {min(lo)} max {max(hi)} (balanced: "
              f"{2 * args.batch_size * args.seq_len // 8} per expert)")


if __name__ == "__main__":
    main()
