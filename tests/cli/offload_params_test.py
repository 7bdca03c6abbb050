"""--offload optimizer+params against --offload none, end to end (issue 14, parameter offload on top
of ZeRO-3): at the same layout the two runs give bitwise the same per-step losses and grad norms,
the same final weights and the same optimizer.safetensors. The parameter shard then lives in the
offload file with the moments (a third part of each 16 KiB block), each group's slice is read from
it before the group's gather (the one after next read ahead), and the update streams it with the
moments; nothing of that may change a bit. Layouts (tiny, 3 steps): dp2 ZeRO 3; dp2 ZeRO 3 with
bf16 matmuls, full recompute (the rerun gathers again) and two micro-batches; dp2 x pp2 1F1B ZeRO 3;
dp2 x tp2 ZeRO 3; dp2 x pp2 interleaved (two model chunks per rank: two offload files);
mixtral-tiny at dp2 x ep2 ZeRO 3 in fp16 (expert segments, loss scaling). Then, at dp2 ZeRO 3:
- the accounting: memory.offloaded holds the moments and the values (12 bytes per shard element),
  the resident optimizer_state the three staging blocks of three parts, and the resident
  parameters' peak falls by the shard (4 bytes per shard element) less the slices in flight
  against --offload none;
- resume crosses modes both ways (optimizer+params stopped at step 2 resumed with none, and the
  reverse) and ends bitwise where the uninterrupted run ends: checkpoints are streamed from the
  offload file and filled back into it;
- a run killed (SIGKILL) mid-training leaves its checkpoint, which resumes with the offload file
  deleted and ends bitwise as an uninterrupted run;
- bad input: optimizer+params without --zero 3 (one message saying to add it), a full disk (a
  256 KiB tmpfs), and a file-size limit (ulimit -f 8 MiB) below the offload file (EFBIG, not a
  silent SIGXFSZ kill), each one clear error before any step, and the checkpoint the limited run
  resumed from still resumes.

Planted bugs seen failing (then removed): the prefetch's slack inside the first page dropped
(FilePrefetch's skip_ forced to 0) fails every equivalence row and the resumes; the update's write
of the values part left out (two parts written back instead of three) fails them too."""
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (check, finish, kill_tree, latest, mpirun, read_metrics, run, start,  # noqa: E402
                     synthetic_tokens, trident, wait_for_steps, write_shard)
import safetensors_stdlib as st  # noqa: E402

STEPS = 3
BATCH, SEQ, VOCAB = 8, 32, 1000
N_ALLOCATED = 135744 + 24 * 32  # tiny: logical parameters + padded vocabulary rows
BLOCK_KIB = 16
ZERO3 = ["--dp", "2", "--zero", "3"]

LAYOUTS = [
    ("dp2_zero3", 2, ZERO3),
    ("dp2_zero3_bf16_full", 2, ZERO3 + ["--precision", "bf16", "--recompute", "full", "--micro-batches", "2"]),
    ("dp2_pp2_zero3_1f1b", 4, ZERO3 + ["--pp", "2", "--schedule", "1f1b", "--micro-batches", "2"]),
    ("dp2_tp2_zero3", 4, ZERO3 + ["--tp", "2"]),
    ("dp2_pp2_zero3_interleaved", 4, ZERO3 + ["--pp", "2", "--schedule", "interleaved", "--virtual-stages", "2",
                                              "--micro-batches", "2"]),
    # Experts sharded over edp (their own ZeRO segments inside each MoE group) and fp16's loss scaling.
    ("mixtral_dp2_ep2_zero3_fp16", 2, ZERO3 + ["--model", "mixtral-tiny", "--ep", "2", "--precision", "fp16",
                                                "--initial-loss-scale", "1024"]),
]


def launch(T, ranks):
    return [T] if ranks == 1 else [mpirun(), "-n", str(ranks), T]


def result(d, tag, steps=STEPS):
    metrics = read_metrics(f"{d}/{tag}.jsonl")
    step_dir = f"{d}/{tag}/step_{steps:08d}"
    return ([(m["loss"], m["grad_norm"]) for m in metrics], st.load(f"{step_dir}/model.safetensors"),
            st.load(f"{step_dir}/optimizer.safetensors"), metrics)


def same_run(name, a, b):
    check(f"{name}: losses and grad norms bitwise", a[0] == b[0], f"{a[0]} vs {b[0]}")
    check(f"{name}: final weights bitwise", a[1] == b[1], "max |diff| %g at %s" % st.max_abs_diff(a[1], b[1]))
    check(f"{name}: AdamW moments bitwise", a[2] == b[2], "max |diff| %g at %s" % st.max_abs_diff(a[2], b[2]))


def fails_clearly(name, cmd, needle):
    rc, _, err = run(cmd)
    check(f"{name}: non-zero exit", rc != 0, f"rc={rc}")
    check(f"{name}: names the problem ({needle!r})", needle in err, err.strip()[-600:])
    check(f"{name}: before any step", "step 1/" not in err and "step 3/" not in err, err.strip()[-300:])
    return err


def main():
    T = trident(sys.argv[1])
    env = {"TRIDENT_COMM_TIMEOUT": "120"}
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(20000, VOCAB, 11))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(3000, VOCAB, 12))
        off = f"{d}/offload"
        os.makedirs(off)
        common = ["train", "--model", "tiny", "--data", f"{d}/syn", "--batch-size", str(BATCH), "--seq-len",
                  str(SEQ), "--lr", "3e-3", "--lr-schedule", "constant", "--eval-every", "0", "--seed", "5",
                  "--log-every", "100"]
        offload = ["--offload", "optimizer+params", "--offload-dir", off, "--offload-block-kib", str(BLOCK_KIB)]
        modes = {"none": ["--offload", "none"], "params": offload}

        # 1. Equivalence at every layout.
        only = os.environ.get("TRIDENT_OFFLOAD_ONLY")  # a layout name, or "none" for the rest only
        for name, ranks, flags in LAYOUTS:
            if only and only != name:
                continue
            res = {}
            base = list(common)
            if "--model" in flags:  # the layout's model in place of tiny
                at = flags.index("--model")
                base[base.index("tiny")] = flags[at + 1]
                flags = flags[:at] + flags[at + 2:]
            for mode, extra in modes.items():
                tag = f"{name}_{mode}"
                cmd = launch(T, ranks) + base + flags + extra + [
                    "--steps", str(STEPS), "--ckpt-dir", f"{d}/{tag}", "--metrics", f"{d}/{tag}.jsonl"]
                rc, _, err = run(cmd, env=env)
                check(f"{tag} runs", rc == 0, f"rc={rc}: {err.strip()[-1500:]}" if rc else "")
                if rc == 0:
                    res[mode] = result(d, tag)
                if mode == "params" and rc == 0:
                    check(f"{tag}: the start-up line says the shard is offloaded",
                          "parameter shard offloaded to" in err, err[-800:])
            if len(res) == 2:
                same_run(name, res["none"], res["params"])
                check(f"{name}: the updates were applied (no step skipped)",
                      not any(m.get("skipped") for m in res["params"][3]), str([m.get("skipped") for m in res["params"][3]]))
            check(f"{name}: offload files removed at exit", os.listdir(off) == [], str(os.listdir(off)))
            if name == "dp2_zero3" and len(res) == 2:
                shard = N_ALLOCATED // 2  # rank 0's (the count is even)
                mem, none_mem = res["params"][3][-1]["memory"], res["none"][3][-1]["memory"]
                check("dp2_zero3: memory.offloaded is the moments and the values (12 bytes per shard element)",
                      mem["offloaded"] == 12 * shard, str(mem))
                check("dp2_zero3: resident optimizer_state is three staging blocks of three parts",
                      mem["optimizer_state"] == 3 * 3 * BLOCK_KIB * 1024, str(mem))
                # Peaks (the metrics' memory): none holds the shard plus the gathered groups; this
                # mode the gathered groups plus at most two slices read, each at most the largest
                # group's (the embeddings: (1024 + 64) x 32 floats) half, widened by a page at each end.
                slice_bytes = 4 * (1024 + 64) * 32 // 2 + 2 * 4096
                drop = none_mem["parameters"] - mem["parameters"]
                check("dp2_zero3: resident parameters fall by the shard less at most two slices in flight",
                      4 * shard - 2 * slice_bytes <= drop <= 4 * shard, f"{drop}: {none_mem} vs {mem}")
                check("dp2_zero3: the resident total falls by at least the moments less the staging",
                      none_mem["total"] - mem["total"] >= 8 * shard - 3 * 3 * BLOCK_KIB * 1024, f"{none_mem} vs {mem}")

        # 2. Resume across modes at dp2 ZeRO 3 (4 steps; the reference runs them without offload).
        run2 = launch(T, 2)
        rc, _, err = run(run2 + common + ZERO3 + ["--steps", "4", "--ckpt-dir", f"{d}/ref", "--metrics",
                                                  f"{d}/ref.jsonl"], env=env)
        check("resume reference runs", rc == 0, err[-1500:])
        ref = result(d, "ref", 4) if rc == 0 else None
        for first, second in (("params", "none"), ("none", "params")):
            tag = f"resume_{first}_to_{second}"
            rc, _, err = run(run2 + common + ZERO3 + modes[first] + [
                "--steps", "4", "--stop-after", "2", "--ckpt-dir", f"{d}/{tag}", "--metrics", f"{d}/{tag}.jsonl"],
                env=env)
            check(f"{tag}: first half", rc == 0, err[-1500:])
            rc, _, err = run(run2 + ["train", "--resume", f"{d}/{tag}", "--ckpt-dir", f"{d}/{tag}", "--metrics",
                                     f"{d}/{tag}.jsonl"] + modes[second], env=env)
            check(f"{tag}: resumed", rc == 0, err[-1500:])
            if rc == 0 and ref:
                same_run(tag, ref, result(d, tag, 4))

        # 3. A run killed (SIGKILL) mid-training: its checkpoint resumes without the offload
        # file (deleted: a crash leaves it useless) and ends bitwise as an uninterrupted run.
        tag = "killed"
        one = [T] + common + ["--zero", "3"]
        proc = start(one + offload + ["--steps", "100000", "--ckpt-every", "2", "--ckpt-dir", f"{d}/{tag}",
                                      "--metrics", f"{d}/{tag}.jsonl", "--threads", "1"], f"{d}/{tag}.err")
        wait_for_steps(proc, f"{d}/{tag}.jsonl", 1)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and latest(f"{d}/{tag}") is None:
            time.sleep(0.001)
        check("the long run was still running when killed", proc.poll() is None, f"rc={proc.poll()}")
        kill_tree(proc)
        if latest(f"{d}/{tag}") is not None:
            step_dir = f"{d}/{tag}/{latest(f'{d}/{tag}')}"
            end = int(step_dir.rsplit("_", 1)[1]) + 2
            check("the killed run left its offload file behind", os.listdir(off) != [], str(os.listdir(off)))
            for f in os.listdir(off):
                os.remove(os.path.join(off, f))
            rc, _, err = run(one + ["--steps", str(end), "--ckpt-dir", f"{d}/killed_ref", "--metrics",
                                    f"{d}/killed_ref.jsonl"])
            check("killed run's reference runs", rc == 0, err[-1500:])
            rc2, _, err2 = run([T, "train", "--resume", step_dir, "--steps", str(end), "--ckpt-dir",
                                f"{d}/{tag}_resumed", "--metrics", f"{d}/{tag}_resumed.jsonl"])
            check("killed run resumes from its checkpoint without its offload file", rc2 == 0, err2[-1500:])
            if rc == 0 and rc2 == 0:
                a, b = result(d, "killed_ref", end), result(d, f"{tag}_resumed", end)
                check("killed + resumed run ends bitwise as the uninterrupted one", a[1] == b[1] and a[2] == b[2],
                      "max |diff| %g at %s" % st.max_abs_diff(a[1], b[1]))

        # 4. Bad input.
        short = [T] + common + ["--steps", "2"]
        for zero in ([], ["--zero", "1"]):
            fails_clearly(f"optimizer+params with {' '.join(zero) or 'no --zero'}", short + zero + offload,
                          "add --zero 3")
        one = short + ["--zero", "3"]
        full = f"{d}/full"
        os.makedirs(full)
        if os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", full],
                                                capture_output=True).returncode == 0:
            try:
                fails_clearly("a full disk (256 KiB tmpfs)",
                              one + ["--offload", "optimizer+params", "--offload-dir", full], "has only")
                check("the full disk is left empty", os.listdir(full) == [], str(os.listdir(full)))
            finally:
                subprocess.run(["umount", full])
        else:
            print("skip full-disk check: cannot mount a small tmpfs here")
        # A file-size limit below the offload file and above what MPI's start-up files take (a
        # few MiB): tiny widened to 128 channels, 1.7M parameters, a 20 MB offload file, against
        # 8 MiB. The checkpoint it resumes from is read, not written: EFBIG from fallocate.
        rc, _, err = run([T] + common + ["--n-embd", "128", "--zero", "3", "--steps", "4", "--stop-after", "2",
                                         "--ckpt-dir", f"{d}/limited", "--metrics", f"{d}/limited.jsonl"])
        check("the limited run's checkpoint is written", rc == 0, err[-1500:])
        limited = ["bash", "-c", 'ulimit -f 8192 && exec "$@"', "_"]
        fails_clearly("a file-size limit (ulimit -f 8192) below the offload file",
                      limited + [T, "train", "--resume", f"{d}/limited", "--ckpt-dir", f"{d}/limited", "--metrics",
                                 f"{d}/limited.jsonl", "--offload", "optimizer+params", "--offload-dir", off],
                      "file-size limit")
        check("the refused run leaves no offload file", os.listdir(off) == [], str(os.listdir(off)))
        rc, _, err = run([T, "train", "--resume", f"{d}/limited", "--ckpt-dir", f"{d}/limited", "--metrics",
                          f"{d}/limited.jsonl"])
        check("its checkpoint still resumes", rc == 0 and os.path.isdir(f"{d}/limited/step_00000004"), err[-1500:])
    finish()


if __name__ == "__main__":
    main()
