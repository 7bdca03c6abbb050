#!/usr/bin/env bash
# The mixture-of-experts job (issue 15): trains `mixtral-small` (8 experts of width 512 per
# layer, top-2; ~50M parameters, ~30M active per token) on Jane Austen's novels with 8 ranks as
# dp 4 x pp 2 with expert parallelism 2 (configs/mixtral_8rank.toml) for the first half of the
# run, stops with a checkpoint, resumes it at another layout (dp 8, ep 4: each rank 2 experts
# per layer) for the second half, generates text from the final checkpoint and prints the
# expert-load figures: per layer the fewest and most tokens an expert got, early and late.
# Run scripts/setup.sh first (the README's command does).
# Usage: scripts/moe_job.sh [extra `trident train` flags for both phases, e.g. --steps 40]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
T=build/trident
RUN=runs/moe
CKPT="$RUN/ckpt"
mkdir -p "$RUN"

if [[ ! -s data/janeausten_train.bin || ! -s data/janeausten_val.bin ]]; then
  "$T" prepare --corpus janeausten --out data/janeausten
fi

STEPS=200
for arg in "$@"; do [[ "${prev:-}" == "--steps" ]] && STEPS="$arg"; prev="$arg"; done
if ! [[ "$STEPS" =~ ^[0-9]+$ ]] || (( STEPS < 2 )); then
  echo "error: --steps $STEPS: the job needs an integer of at least 2 (two phases)" >&2
  exit 2
fi
HALF=$((STEPS / 2))
rm -rf "$CKPT" "$RUN"/phase*.jsonl

echo "== phase 1: steps 1-$HALF on 8 ranks as dp 4 x pp 2, ep 2 (1F1B, ZeRO-1)"
scripts/trident-mpirun -n 8 "$T" train --config configs/mixtral_8rank.toml --steps "$STEPS" \
  --stop-after "$HALF" --ckpt-dir "$CKPT" --metrics "$RUN/phase1.jsonl" "$@"
"$T" ckpt info "$CKPT" >"$RUN/ckpt_info.txt"
tail -1 "$RUN/ckpt_info.txt"

echo "== phase 2: resume step $HALF at another layout, dp 8 with ep 4, to step $STEPS"
scripts/trident-mpirun -n 8 "$T" train --config configs/mixtral_8rank.toml --steps "$STEPS" \
  --dp 8 --pp 1 --ep 4 --micro-batches 1 --resume "$CKPT" --ckpt-dir "$CKPT" \
  --metrics "$RUN/phase2.jsonl" "$@"

echo "== sample from $CKPT (single process; the checkpoint is layout-free)"
"$T" generate --ckpt "$CKPT" --prompt "It is a truth universally acknowledged" \
  --max-new-tokens 60 --temperature 0 --repetition-penalty 1.3

cat "$RUN/phase1.jsonl" "$RUN/phase2.jsonl" > "$RUN/metrics.jsonl"
/usr/bin/python3 - "$RUN/metrics.jsonl" data/janeausten_meta.json <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
meta = json.load(open(sys.argv[2]))
tokens = rows[0]["tokens"]
balanced = 2 * tokens // 8  # top-2 of 8 experts
def load(r):
    lo, hi = r["expert_load"]["min"], r["expert_load"]["max"]
    return " ".join(f"{a}-{b}" for a, b in zip(lo, hi))
print(f"== expert load (per layer: fewest-most tokens an expert got; balanced = {balanced}):")
for r in [rows[0], rows[len(rows) // 2 - 1], rows[-1]]:
    print(f"   step {r['step']:4d}: {load(r)}   aux_loss {r['aux_loss']:.4f}")
val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
h = meta["val"]["cross_entropy_under_train_unigram_nats"]
print("== validation loss by step: " + ", ".join(f"{s}: {v:.3f}" for s, v in val))
print(f"== result: final validation loss {val[-1][1]:.3f} nats/token against {h:.3f} for a unigram model")
tps = [r["tokens_per_s"] for r in rows[1:]]
print(f"== throughput: median {sorted(tps)[len(tps) // 2]:.0f} tokens/s over 8 ranks")
PY
echo "== checkpoint: $CKPT; metrics: $RUN/metrics.jsonl"
