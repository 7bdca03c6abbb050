#!/usr/bin/env bash
# Draws the loss curves of one or more metrics files (JSON lines from `trident train --metrics`)
# into a PNG with gnuplot: training loss per step and validation loss where measured.
# Usage: scripts/plot_loss.sh OUT.png METRICS.jsonl [MORE.jsonl ...]
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 OUT.png METRICS.jsonl [MORE.jsonl ...]" >&2; exit 2; }
out="$1"; shift
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
plots=()
i=0
for metrics in "$@"; do
  [[ -s "$metrics" ]] || { echo "plot: $metrics is missing or empty" >&2; exit 1; }
  /usr/bin/python3 - "$metrics" "$tmp/train$i.tsv" "$tmp/val$i.tsv" <<'PY'
import json, sys
src, train, val = sys.argv[1:4]
with open(src) as f, open(train, "w") as t, open(val, "w") as v:
    for line in f:
        m = json.loads(line)
        t.write(f"{m['step']}\t{m['loss']}\n")
        if "val_loss" in m:
            v.write(f"{m['step']}\t{m['val_loss']}\n")
PY
  name="$(basename "$metrics" .jsonl)"
  plots+=("'$tmp/train$i.tsv' using 1:2 with lines lw 1.5 title '$name train'")
  [[ -s "$tmp/val$i.tsv" ]] && plots+=("'$tmp/val$i.tsv' using 1:2 with linespoints lw 2 pt 7 title '$name val'")
  i=$((i + 1))
done
joined="$(IFS=,; echo "${plots[*]}")"
gnuplot <<GP
set terminal pngcairo size 900,540 font ",11"
set output '$out'
set xlabel 'step'
set ylabel 'cross-entropy (nats/token)'
set grid
set key top right
plot $joined
GP
echo "plot: wrote $out"
