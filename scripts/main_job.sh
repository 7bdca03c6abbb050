#!/usr/bin/env bash
# The main job: what a cluster does, on one machine. Prepares Jane Austen's novels
# (Persuasion held out for validation), trains the `small` preset (30M parameters) with
# 8 ranks laid out as dp 2 x tp 2 x pp 2 (one thread each) for the first half of the run,
# stops with a checkpoint, resumes that checkpoint at another layout (dp 4 x tp 2) for the
# second half, generates text from the final checkpoint and plots the loss.
# Run scripts/setup.sh first (the README's command does).
# Usage: scripts/main_job.sh [extra `trident train` flags for both phases, e.g. --steps 100]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
T=build/trident
RUN=runs/main
CKPT="$RUN/ckpt"
mkdir -p "$RUN"

if [[ ! -s data/janeausten_train.bin || ! -s data/janeausten_val.bin ]]; then
  "$T" prepare --corpus janeausten --out data/janeausten
fi

# The LR schedule spans all --steps; phase 1 stops halfway (--stop-after) and phase 2 resumes,
# so together they are one uninterrupted run.
STEPS=400
for arg in "$@"; do [[ "${prev:-}" == "--steps" ]] && STEPS="$arg"; prev="$arg"; done
HALF=$((STEPS / 2))
rm -rf "$CKPT" "$RUN"/phase*.jsonl

echo "== phase 1: steps 1-$HALF on 8 ranks as dp 2 x tp 2 x pp 2 (1F1B, ZeRO-1)"
scripts/trident-mpirun -n 8 "$T" train --config configs/hybrid_8rank.toml --steps "$STEPS" \
  --stop-after "$HALF" --ckpt-dir "$CKPT" --metrics "$RUN/phase1.jsonl" "$@"
# (Into a file, then its head: ckpt info verifies every tensor as it prints, and a pipe into
# head would end it with SIGPIPE, failing the job under pipefail.)
"$T" ckpt info "$CKPT" >"$RUN/ckpt_info.txt"
head -5 "$RUN/ckpt_info.txt"

echo "== phase 2: resume step $HALF at another layout, dp 4 x tp 2 (no pipeline), to step $STEPS"
scripts/trident-mpirun -n 8 "$T" train --config configs/hybrid_8rank.toml --steps "$STEPS" \
  --dp 4 --tp 2 --pp 1 --micro-batches 2 --resume "$CKPT" --ckpt-dir "$CKPT" \
  --metrics "$RUN/phase2.jsonl" "$@"

echo "== samples from $CKPT (single process; the checkpoint is layout-free)"
echo "-- greedy, repetition penalty 1.3 (without it a model this small loops on its likeliest phrase):"
"$T" generate --ckpt "$CKPT" --prompt "It is a truth universally acknowledged" \
  --max-new-tokens 60 --temperature 0 --repetition-penalty 1.3
echo "-- temperature 0.8, top-k 40:"
"$T" generate --ckpt "$CKPT" --prompt "Elizabeth" --max-new-tokens 60 --temperature 0.8 --seed 7

cat "$RUN/phase1.jsonl" "$RUN/phase2.jsonl" > "$RUN/metrics.jsonl"
scripts/plot_loss.sh "$RUN/loss.png" "$RUN/metrics.jsonl"
/usr/bin/python3 - "$RUN/metrics.jsonl" data/janeausten_meta.json <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
meta = json.load(open(sys.argv[2]))
val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
h = meta["val"]["cross_entropy_under_train_unigram_nats"]
tps = [r["tokens_per_s"] for r in rows[1:]]
print("== validation loss by step: " + ", ".join(f"{s}: {v:.3f}" for s, v in val))
print(f"== result: final validation loss {val[-1][1]:.3f} nats/token; a unigram model (no context) "
      f"scores {h:.3f} on the same text (unigram entropy of the training text: "
      f"{meta['train']['unigram_entropy_nats']:.3f}) -> "
      f"{'well below' if val[-1][1] < h - 0.5 else 'NOT well below'} it, by {h - val[-1][1]:.2f} nats")
print(f"== throughput: median {sorted(tps)[len(tps) // 2]:.0f} tokens/s over 8 ranks")
PY
echo "== loss plot: $RUN/loss.png; checkpoint: $CKPT; metrics: $RUN/metrics.jsonl"
