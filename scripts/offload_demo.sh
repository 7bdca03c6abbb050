#!/usr/bin/env bash
# Issue 14's demonstration: GPT-2 XL's shapes (48 layers, 1600 channels, 25 heads, 1.56B
# parameters) trained on Jane Austen for a few steps on one machine whose memory cannot hold
# it with fp32 AdamW in memory (16 bytes x 1.56B = 24.9 GB > 24 GiB, before activations),
# with --precision bf16 (matmul speed), --recompute full (activations: each layer's input
# only) and --zero 1 --offload optimizer (the AdamW moments, 8 bytes a parameter, and the fp32
# master of the layer matrices, 4 bytes each, on disk under DIR; in memory the bf16 copy, the
# gradients and the embeddings' fp32 values: ZeRO 1 at one rank is ZeRO 0's math with the master
# sharded, here the whole of it, and so offloadable; docs/memory.md). It prints the planner's prediction for the same run (memory by category, step time
# from the disk bandwidth measured in DIR), then trains and prints the measured resident
# memory and step times, and the ratio of measured to predicted resident memory.
#
# Usage: scripts/offload_demo.sh [--steps N (3)] [--dir DIR (runs/offload_demo)] [--ckpt] [--params]
#   --ckpt also writes the final checkpoint (6.2 GB of weights + 12.5 GB of moments, streamed
#   from the offload file) under DIR/ckpt. --params runs --zero 3 --offload optimizer+params
#   (the weights on disk too, 19 GB there; the planner predicts that run's ZeRO-3 row). Needs
#   ~10 GiB of free memory and ~19 GB free in DIR (~19 GB more with --ckpt). Run scripts/setup.sh first.
#   Prints three resident figures against the plan's formula: the trainer's tracked peak during
#   the steps, and the kernel's peak RSS (VmHWM) of the process, start-up included.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
T=build/trident
STEPS=3
DIR=runs/offload_demo
CKPT=0
OFFLOAD=(--zero 1 --offload optimizer)
PLAN_OFFLOAD=(--offload optimizer)
PARAMS=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --steps) STEPS="$2"; shift 2 ;;
    --dir) DIR="$2"; shift 2 ;;
    --ckpt) CKPT=1; shift ;;
    --params) PARAMS=1; OFFLOAD=(--zero 3 --offload optimizer+params); PLAN_OFFLOAD=(--offload optimizer+params); shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "offload_demo: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$STEPS" =~ ^[1-9][0-9]*$ ]] || { echo "offload_demo: --steps takes a positive integer, not '$STEPS'" >&2; exit 2; }
[[ -x "$T" ]] || { echo "offload_demo: $T is missing: run scripts/setup.sh first" >&2; exit 1; }
if [[ ! -s data/janeausten_train.bin || ! -s data/janeausten_val.bin ]]; then
  "$T" prepare --corpus janeausten --out data/janeausten
fi
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
OFF="$DIR/offload"
mkdir -p "$OFF"

# Refuse early, with the numbers, rather than being killed by the kernel or a full disk.
need_mem_kib=$((10 * 1024 * 1024))
avail_kib=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
if (( avail_kib < need_mem_kib )); then
  echo "offload_demo: $((avail_kib / 1024)) MiB of memory available, the run needs ~$((need_mem_kib / 1024 / 1024)) GiB resident" >&2
  exit 1
fi
need_disk_kib=$(( (19 + (CKPT ? 19 : 0)) * 1000 * 1000 * 1000 / 1024 ))
free_kib=$(df -Pk "$DIR" | awk 'NR == 2 {print $4}')
if (( free_kib < need_disk_kib )); then
  echo "offload_demo: $((free_kib / 1024 / 1024)) GiB free under $DIR, the run needs ~$((need_disk_kib / 1024 / 1024)) GiB" >&2
  exit 1
fi

# Hugging Face's gpt2-xl config.json (its shapes; the weights are initialised, not downloaded).
CFG="$DIR/gpt2-xl.json"
cat >"$CFG" <<'EOF'
{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": 48, "n_embd": 1600,
 "n_head": 25, "n_positions": 1024, "n_ctx": 1024, "vocab_size": 50257,
 "activation_function": "gelu_new", "layer_norm_epsilon": 1e-05}
EOF
SHAPE=(--batch-size 1 --seq-len 128)

echo "== plan: the same run, predicted (memory per category, step time from ${OFF}'s measured bandwidth)"
"$T" plan --model "$CFG" --world 1 "${SHAPE[@]}" --recompute full --precision bf16 "${PLAN_OFFLOAD[@]}" \
  --offload-dir "$OFF" --threads 2 --json "$DIR/plan.jsonl" | tee "$DIR/plan.txt"
# The row of the layout trained: ZeRO 3 with --params, else ZeRO 1 (the planner plans an offloaded
# one-rank bf16 layout as ZeRO 1, its master on disk).
predicted=$(python3 -c '
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
want = 3 if sys.argv[2] == "1" else 1
print(next(r for r in rows if r["zero"] == want and r["offload"])["memory_bytes"])' "$DIR/plan.jsonl" "$PARAMS")

echo "== train: $STEPS steps, bf16 matmuls, full recompute, ${OFFLOAD[*]} to $OFF"
ckpt_flags=()
(( CKPT )) && ckpt_flags=(--ckpt-dir "$DIR/ckpt")
rm -rf "$DIR/ckpt" "$DIR/train.jsonl"
# The trainer reports the kernel's peak RSS of its process (VmHWM, start-up included) in its
# metrics (peak_rss) and closing printout, beside its own accounting.
"$T" train --model "$CFG" --data data/janeausten "${SHAPE[@]}" --steps "$STEPS" \
  --lr 3e-5 --warmup-steps 1 --precision bf16 --recompute full "${OFFLOAD[@]}" --offload-dir "$OFF" \
  --threads 2 --eval-every 0 --metrics "$DIR/train.jsonl" "${ckpt_flags[@]}" 2>&1 | tee "$DIR/train.txt"

# The trainer's memory printout: "total resident current X peak Y".
python3 - "$DIR/train.txt" "$DIR/train.jsonl" "$predicted" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
units = {"B": 1, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3}
m = re.search(r"total resident\s+current\s+[\d.]+ \w+\s+peak\s+([\d.]+) (\w+)", text)
off = re.search(r"offloaded\s+current\s+[\d.]+ \w+\s+peak\s+([\d.]+) (\w+)", text)
if not m:
    sys.exit("offload_demo: no memory printout in the training output")
peak = float(m.group(1)) * units[m.group(2)]
pred = float(sys.argv[3])
steps = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
times = [s["step_ms"] / 1e3 for s in steps]
print(f"resident peak {peak / 2**20:.1f} MiB (the trainer's accounting), predicted by plan {pred / 2**20:.1f} MiB: "
      f"measured / predicted = {peak / pred:.3f}")
r = steps[-1]["peak_rss"]
print(f"kernel peak RSS (VmHWM, start-up included) {r / 2**20:.1f} MiB: VmHWM / predicted = {r / pred:.3f}, "
      f"VmHWM / tracked = {r / peak:.3f} (VmHWM also holds the binary, its libraries and the allocator's slack)")
if off:
    print(f"offloaded to disk: {off.group(1)} {off.group(2)}")
print("step times (s): " + ", ".join(f"{t:.1f}" for t in times))
print("losses: " + ", ".join(f"{s['loss']:.4f}" for s in steps))
PY
