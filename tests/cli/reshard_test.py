"""Resharding (issue 8): a checkpoint written by one layout resumes at another and training
continues as if uninterrupted: N steps at layout X, save, N steps at layout Y equals 2N steps
at layout X within fp32 tolerance (losses of steps N+1..2N and the final weights).

Tolerances as in layout_matrix_test.py: layouts differ only in summation order, so losses
agree to ~1e-6 relative (bound 2e-5) and weights within 1% of Adam's step budget sum(lr)."""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import check, finish, mpirun, read_metrics, run, synthetic_tokens, trident, write_shard  # noqa: E402
import safetensors_stdlib as st  # noqa: E402

N = 3
LR = 3e-3
# (name, layout X flags, layout Y flags). --resume restores every option not given, so Y gives
# its layout in full (--tp 1, --pp 1, --no-sequence-parallel where X differs).
PAIRS = [
    ("tp4 -> tp1", "--tp 4", "--tp 1"),
    ("pp2 -> pp4", "--pp 2 --schedule 1f1b", "--pp 4 --schedule gpipe"),
    ("dp2 zero3 -> dp4 zero0", "--dp 2 --zero 3", "--dp 4 --zero 0"),
    ("dp2 x tp2 x pp2 -> dp4 x tp2", "--dp 2 --tp 2 --pp 2", "--dp 4 --tp 2 --pp 1"),
    ("single -> dp2 x pp2 interleaved zero1", "", "--dp 2 --pp 2 --schedule interleaved --virtual-stages 2 --zero 1"),
    ("tp2 sequence-parallel -> pp2 x tp2", "--tp 2 --sequence-parallel", "--pp 2 --tp 2 --no-sequence-parallel"),
]


# Llama (llama-tiny: grouped-query attention, untied head): a 3D layout resumed at tp 4, where
# each key/value head is replicated on two ranks, and a pipeline with its untied head resumed
# without one.
LLAMA_PAIRS = [
    ("llama dp2 x tp2 x pp2 -> tp4", "--dp 2 --tp 2 --pp 2", "--dp 1 --tp 4 --pp 1"),
    ("llama pp4 1f1b -> dp2 zero3", "--pp 4 --schedule 1f1b", "--pp 1 --dp 2 --zero 3"),
]

# Mixtral with expert parallelism: a checkpoint saved with each rank holding 2 (or 1) of the 4
# experts resumes where every rank holds all of them, and the reverse (one expert per tensor in
# the file whatever the ep).
MIXTRAL_PAIRS = [
    ("mixtral dp4 ep2 -> dp2 ep1", "--dp 4 --ep 2", "--dp 2 --ep 1"),
    ("mixtral dp2 x pp2 ep2 -> dp4 ep4", "--dp 2 --pp 2 --ep 2", "--dp 4 --pp 1 --ep 4"),
    ("mixtral single -> dp4 x tp2 ep4", "", "--dp 4 --tp 2 --ep 4"),
    # ZeRO with ep: expert moments sharded over edp on save, re-sharded on load.
    ("mixtral dp2 ep2 zero1 -> dp2 ep1 zero0", "--dp 2 --ep 2 --zero 1", "--dp 2 --ep 1 --zero 0"),
    ("mixtral dp2 ep2 zero1 -> dp4 ep2 zero3", "--dp 2 --ep 2 --zero 1", "--dp 4 --ep 2 --zero 3"),
    ("mixtral dp2 ep2 zero1 -> dp4 ep4 zero2", "--dp 2 --ep 2 --zero 1", "--dp 4 --ep 4 --zero 2"),
    # The same layout on both sides: the continuation is bitwise the uninterrupted run's.
    ("mixtral dp4 ep2 zero3 -> itself", "--dp 4 --ep 2 --zero 3", "--dp 4 --ep 2 --zero 3"),
    ("mixtral dp4 x pp2 ep2 zero2 -> itself", "--dp 4 --pp 2 --ep 2 --zero 2", "--dp 4 --pp 2 --ep 2 --zero 2"),
]


def world(flags):
    f = flags.split()
    size = 1
    for k in ("--dp", "--tp", "--pp"):
        if k in f:
            size *= int(f[f.index(k) + 1])
    return size


def launch(T, flags, args):
    n = world(flags)
    cmd = ([mpirun(), "-n", str(n)] if n > 1 else []) + [T] + args + flags.split()
    return run(cmd, env={"TRIDENT_COMM_TIMEOUT": "120"})


def main(model="tiny", pairs=PAIRS):
    build = sys.argv[1]
    T = trident(build)
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(30000, 1000, 21))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(3000, 1000, 22))
        common = ["train", "--model", model, "--data", f"{d}/syn", "--batch-size", "16", "--seq-len", "32",
                  "--steps", str(2 * N), "--lr", str(LR), "--warmup-steps", "1", "--eval-every", "0",
                  "--seed", "9", "--micro-batches", "4", "--log-every", "100"]
        for i, (name, x, y) in enumerate(pairs):
            ref, part = f"{d}/ref{i}", f"{d}/part{i}"
            rc, _, err = launch(T, x, common + ["--ckpt-dir", ref, "--metrics", f"{ref}.jsonl"])
            if rc:
                check(f"{name}: uninterrupted run at X", False, err.strip()[-1200:])
                continue
            rc, _, err = launch(T, x, common + ["--ckpt-dir", part, "--stop-after", str(N)])
            if rc:
                check(f"{name}: first half at X", False, err.strip()[-1200:])
                continue
            rc, _, err = launch(T, y, common + ["--ckpt-dir", part, "--resume", part,
                                                "--metrics", f"{part}.jsonl"])
            if rc:
                check(f"{name}: second half at Y", False, err.strip()[-1200:])
                continue
            a = [m["loss"] for m in read_metrics(f"{ref}.jsonl")][N:]
            b = [m["loss"] for m in read_metrics(f"{part}.jsonl")]
            dev = max(abs(p - q) / abs(p) for p, q in zip(a, b)) if len(a) == len(b) == N else float("inf")
            w, where = st.max_abs_diff(st.load(f"{ref}/step_{2 * N:08d}/model.safetensors"),
                                       st.load(f"{part}/step_{2 * N:08d}/model.safetensors"))
            print(f"{name:<40} loss rel dev {dev:.2e}  weight abs dev {w:.2e} ({where})", flush=True)
            check(f"{name}: losses continue", dev < 2e-5, f"{a} vs {b}")
            check(f"{name}: final weights", w < 0.01 * 2 * N * LR, f"{w:.2e} at {where}")
            if x == y:  # weights and AdamW moments restored exactly: nothing may differ
                check(f"{name}: bitwise continuation", a == b and w == 0.0, f"loss dev {dev:.2e}, weights {w:.2e}")




def hf_directory_into_layouts(build, model="tiny", sharded=False):
    """A Hugging Face-style directory (only model.safetensors + config.json; or, sharded, the
    model-0000N-of-0000M.safetensors files with model.safetensors.index.json that real Llama
    checkpoints use) initialises any layout: the first validation loss is the same at every
    layout. The directory's config.json picks the model (--model DIR)."""
    import json
    import shutil
    import subprocess
    T = trident(build)
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(30000, 1000, 31))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(3000, 1000, 32))
        common = ["--data", f"{d}/syn", "--batch-size", "8", "--seq-len", "32",
                  "--micro-batches", "2", "--log-every", "100", "--eval-batches", "2"]
        rc, _, err = launch(T, "", ["train", "--model", model] + common +
                            ["--steps", "2", "--ckpt-dir", f"{d}/src", "--eval-every", "0"])
        check(f"{model}: source run for the HF-style directory", rc == 0, err[-800:] if rc else "")
        if rc:
            return
        os.makedirs(f"{d}/hf")
        shutil.copy(f"{d}/src/step_00000002/config.json", f"{d}/hf/config.json")
        if sharded:
            shard_tool = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "ref", "shard_safetensors.py")
            subprocess.run(["/usr/bin/python3", shard_tool, f"{d}/src/step_00000002/model.safetensors", f"{d}/hf",
                            "--max-shard-size", "100KB"], check=True)
            index = json.load(open(f"{d}/hf/model.safetensors.index.json"))
            shards = sorted(set(index["weight_map"].values()))
            check(f"{model}: the directory is sharded as Hugging Face shards it", len(shards) >= 2 and
                  not os.path.exists(f"{d}/hf/model.safetensors"), f"{shards}")
        else:
            shutil.copy(f"{d}/src/step_00000002/model.safetensors", f"{d}/hf/model.safetensors")
        config = json.load(open(f"{d}/hf/config.json"))
        if model.startswith("llama"):
            check("a Llama checkpoint's config.json is Hugging Face's LlamaForCausalLM",
                  config.get("model_type") == "llama" and config.get("architectures") == ["LlamaForCausalLM"] and
                  config.get("num_key_value_heads") == 2 and config.get("tie_word_embeddings") is False, f"{config}")
        vals = {}
        for flags in ["", "--tp 2 --pp 2", "--dp 2 --pp 2 --zero 3", "--tp 4"]:
            rc, _, err = launch(T, flags, ["train", "--model", f"{d}/hf"] + common +
                                ["--init-from", f"{d}/hf", "--steps", "1", "--lr", "1e-12",
                                                    "--eval-every", "1", "--metrics", f"{d}/m.jsonl"])
            if rc:
                check(f"HF-style directory into layout '{flags}'", False, err.strip()[-800:])
                continue
            vals[flags] = read_metrics(f"{d}/m.jsonl")[0]["val_loss"]
        base = vals.get("")
        for flags, v in vals.items():
            if flags:
                check(f"{model}{' sharded' if sharded else ''} HF-style directory into layout '{flags}' evaluates like single-process",
                      base is not None and abs(v - base) < 2e-5 * base, f"{v:.7f} vs {base}")


if __name__ == "__main__":
    main()
    main("llama-tiny", LLAMA_PAIRS)
    main("mixtral-tiny", MIXTRAL_PAIRS)
    hf_directory_into_layouts(sys.argv[1])
    hf_directory_into_layouts(sys.argv[1], "llama-tiny", sharded=True)
    finish()
