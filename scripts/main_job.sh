#!/usr/bin/env bash
# The main job: prepare Jane Austen's novels (Persuasion held out), train the `small` preset on
# them with validation, save checkpoints, generate a sample from the trained checkpoint and
# plot the loss. Run scripts/setup.sh first (the README's command does).
# Usage: scripts/main_job.sh [extra `trident train` flags, e.g. --steps 50]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
T=build/trident
RUN=runs/main
mkdir -p "$RUN"

if [[ ! -s data/janeausten_train.bin || ! -s data/janeausten_val.bin ]]; then
  "$T" prepare --corpus janeausten --out data/janeausten
fi

echo "== training the small preset on Jane Austen (single process, all cores)"
rm -rf "$RUN/ckpt" "$RUN/metrics.jsonl"
"$T" train --config configs/small_janeausten.toml --ckpt-dir "$RUN/ckpt" \
  --metrics "$RUN/metrics.jsonl" "$@"

echo "== sample from $RUN/ckpt (greedy, then temperature 0.8)"
"$T" generate --ckpt "$RUN/ckpt" --prompt "It is a truth universally acknowledged" \
  --max-new-tokens 60 --temperature 0
"$T" generate --ckpt "$RUN/ckpt" --prompt "Elizabeth" --max-new-tokens 60 --temperature 0.8 --seed 7

scripts/plot_loss.sh "$RUN/loss.png" "$RUN/metrics.jsonl"
/usr/bin/python3 - "$RUN/metrics.jsonl" data/janeausten_meta.json <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
meta = json.load(open(sys.argv[2]))
val = [r["val_loss"] for r in rows if "val_loss" in r]
h = meta["val"]["cross_entropy_under_train_unigram_nats"]
print(f"== result: final validation loss {val[-1]:.3f} nats/token vs {h:.3f} for the best "
      f"unigram model (train unigram entropy {meta['train']['unigram_entropy_nats']:.3f}); "
      f"{'well below' if val[-1] < h - 0.5 else 'NOT well below'} it")
PY
echo "== loss plot: $RUN/loss.png; checkpoint: $RUN/ckpt; metrics: $RUN/metrics.jsonl"
