"""--offload optimizer against --offload none, end to end (issue 14, first slice): at the same layout
the two runs give bitwise the same per-step losses and grad norms, the same final weights and the
same optimizer.safetensors (the update is elementwise, so streaming the moments through 16 KiB
blocks must not change a bit). Layouts: one process; dp2 under ZeRO 0, 1, 2 and 3; dp2 x tp2 x pp2
1F1B under ZeRO 1; and in bf16, where ZeRO 1-2's sharded fp32 master joins the moments in the
offload file (parallel/zero_master.h): ZeRO 1 at one process (two micro-batches), dp2 ZeRO 1, dp2
ZeRO 2 with stochastic rounding (the 16-bit copy rounded from the master as it streams through the
update must be the copy rounded from the values at the next step), dp2 x pp2 interleaved bf16
ZeRO 1 (two model chunks per rank: two masters, two files). Then, at one process:
- resume crosses modes both ways (offloaded run stopped at step 2, resumed without offload, and
  the reverse) and ends bitwise where the uninterrupted run ends, in fp32 and in bf16 at ZeRO 1
  (the offloaded master loaded from a checkpoint written without offload, and the reverse);
- the memory accounting: metrics' memory.offloaded holds both moments (8 bytes per element) and
  the resident optimizer_state only the three staging blocks; in bf16 at ZeRO 1 also the master
  (4 bytes per layer-matrix element), which leaves the resident parameters, and the staging blocks
  hold three parts; the offload file is gone after a clean exit;
- a run killed (SIGKILL) mid-training leaves its checkpoint loadable: with its offload file
  deleted the resume still succeeds from the checkpoint and matches an uninterrupted run;
- a second live run on the same --offload-dir is refused (the first one's file lock);
- bad input: --offload without --offload-dir, a missing directory, a read-only one, a full disk
  (a 256 KiB tmpfs, when this user may mount one): one clear error, non-zero exit, no step run.

Mutations were tried by hand against tests/unit/optim_moment_store_test.cpp, whose store this
test drives end to end: the update skipped for the last (partial) block fails the bitwise AdamW and
the block-order checks; the read that keeps the rest of a partially written block removed fails
the random-access check. The moments_of bug found while writing this test (a parameter outside
this rank's ZeRO-1 shard read at an offset past the store) made the dp2 ZeRO 1-3 rows fail."""
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
N_OPERAND = 8 * 12 * 32 * 32  # tiny's layer matrices (8 layers of 12 C^2, C = 32): the operand-only ones
BLOCK_KIB = 16
BF16_ZERO1 = ["--zero", "1", "--precision", "bf16"]

LAYOUTS = [
    ("single", 1, ["--micro-batches", "2"]),
    ("dp2_zero0", 2, ["--dp", "2"]),
    ("dp2_zero1", 2, ["--dp", "2", "--zero", "1"]),
    ("dp2_zero2", 2, ["--dp", "2", "--zero", "2"]),
    ("dp2_zero3", 2, ["--dp", "2", "--zero", "3"]),
    ("dp2_tp2_pp2_zero1", 8, ["--dp", "2", "--tp", "2", "--pp", "2", "--zero", "1", "--schedule", "1f1b",
                              "--micro-batches", "2"]),
    ("single_bf16_zero1", 1, BF16_ZERO1 + ["--micro-batches", "2"]),
    ("dp2_bf16_zero1", 2, ["--dp", "2"] + BF16_ZERO1),
    ("dp2_bf16_zero2_sr", 2, ["--dp", "2", "--zero", "2", "--precision", "bf16", "--stochastic-rounding"]),
    ("dp2_pp2_bf16_zero1_interleaved", 4, ["--dp", "2", "--pp", "2"] + BF16_ZERO1 + [
        "--schedule", "interleaved", "--virtual-stages", "2", "--micro-batches", "2"]),
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
    check(f"{name}: before any step", "step 1/" not in err, err.strip()[-300:])


def try_mount(path, opts):
    os.makedirs(path, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", path], capture_output=True)
    return p.returncode == 0


def main():
    T = trident(sys.argv[1])
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(20000, VOCAB, 11))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(3000, VOCAB, 12))
        off = f"{d}/offload"
        os.makedirs(off)
        common = ["train", "--model", "tiny", "--data", f"{d}/syn", "--batch-size", str(BATCH), "--seq-len",
                  str(SEQ), "--lr", "3e-3", "--lr-schedule", "constant", "--eval-every", "0", "--seed", "5",
                  "--log-every", "100"]
        offload = ["--offload", "optimizer", "--offload-dir", off, "--offload-block-kib", str(BLOCK_KIB)]

        # 1. Equivalence at every layout.
        only = os.environ.get("TRIDENT_OFFLOAD_ONLY")  # a layout name, or "none" for the rest only
        for name, ranks, flags in LAYOUTS:
            if only and only != name:
                continue
            res = {}
            for mode, extra in (("none", []), ("optimizer", offload)):
                tag = f"{name}_{mode}"
                cmd = launch(T, ranks) + common + flags + extra + [
                    "--steps", str(STEPS), "--ckpt-dir", f"{d}/{tag}", "--metrics", f"{d}/{tag}.jsonl"]
                rc, _, err = run(cmd, env={"TRIDENT_COMM_TIMEOUT": "120"})
                check(f"{tag} runs", rc == 0, f"rc={rc}: {err.strip()[-1500:]}" if rc else "")
                if mode == "optimizer" and "bf16" in flags:  # the sharded master went to the file too
                    check(f"{tag}: the fp32 master is offloaded", "AdamW moments and the fp32 master shard offloaded"
                          in err, err.strip()[-800:])
                if rc == 0:
                    res[mode] = result(d, tag)
            if len(res) == 2:
                same_run(name, res["none"], res["optimizer"])
            check(f"{name}: offload files removed at exit", os.listdir(off) == [], str(os.listdir(off)))
            if name == "single" and len(res) == 2:
                mem = res["optimizer"][3][-1]["memory"]
                check("single: memory.offloaded is both moments (8 bytes per element)",
                      mem["offloaded"] == 8 * N_ALLOCATED, str(mem))
                check("single: resident optimizer_state is the three staging blocks",
                      mem["optimizer_state"] == 3 * 2 * BLOCK_KIB * 1024, str(mem))
                check("single: resident total excludes the offloaded bytes",
                      mem["total"] == sum(v for k, v in mem.items() if k not in ("total", "offloaded")), str(mem))
                none_total = res["none"][3][-1]["memory"]["total"]
                check("single: resident total falls by the moments less the staging",
                      none_total - mem["total"] == 8 * N_ALLOCATED - 3 * 2 * BLOCK_KIB * 1024,
                      f"{none_total} vs {mem['total']}")
            if name == "single_bf16_zero1" and len(res) == 2:
                mem, none_mem = res["optimizer"][3][-1]["memory"], res["none"][3][-1]["memory"]
                check("single bf16 zero1: memory.offloaded is both moments and the fp32 master",
                      mem["offloaded"] == 8 * N_ALLOCATED + 4 * N_OPERAND, str(mem))
                check("single bf16 zero1: the master left the resident parameters (copy + value-read values stay)",
                      mem["parameters"] == 2 * N_ALLOCATED + 4 * (N_ALLOCATED - N_OPERAND)
                      and none_mem["parameters"] - mem["parameters"] == 4 * N_OPERAND,
                      f"{mem['parameters']} vs {none_mem['parameters']} without offload")
                check("single bf16 zero1: resident optimizer_state is three staging blocks of three parts",
                      mem["optimizer_state"] == 3 * 3 * BLOCK_KIB * 1024, str(mem))

        # 2. Resume across modes (one process, 4 steps; the reference is 4 steps without offload),
        # in fp32 and in bf16 at ZeRO 1 (the offloaded master).
        for prec_tag, prec in (("", []), ("bf16_zero1_", BF16_ZERO1)):
            ref_tag = f"resume_{prec_tag}ref"
            rc, _, err = run([T] + common + prec + ["--steps", "4", "--ckpt-dir", f"{d}/{ref_tag}", "--metrics",
                                                    f"{d}/{ref_tag}.jsonl"])
            check(f"{ref_tag} runs", rc == 0, err[-1500:])
            ref = result(d, ref_tag, 4)
            for first, second in (("optimizer", "none"), ("none", "optimizer")):
                tag = f"resume_{prec_tag}{first}_to_{second}"
                mode_flags = {"optimizer": offload, "none": ["--offload", "none"]}
                rc, _, err = run([T] + common + prec + mode_flags[first] + [
                    "--steps", "4", "--stop-after", "2", "--ckpt-dir", f"{d}/{tag}", "--metrics", f"{d}/{tag}.jsonl"])
                check(f"{tag}: first half", rc == 0, err[-1500:])
                rc, _, err = run([T, "train", "--resume", f"{d}/{tag}", "--ckpt-dir", f"{d}/{tag}", "--metrics",
                                  f"{d}/{tag}.jsonl"] + mode_flags[second])
                check(f"{tag}: resumed", rc == 0, err[-1500:])
                if rc == 0:
                    r = result(d, tag, 4)
                    same_run(tag, ref, r)
                    if prec:
                        check(f"{tag}: the resumed run held the master as asked",
                              (r[3][-1]["memory"]["offloaded"] > 8 * N_ALLOCATED) == (second == "optimizer"),
                              str(r[3][-1]["memory"]))

        # 3. A killed run: checkpoint intact, offload file useless and removable, resume works.
        tag = "killed"
        # Many steps, so that it is still running when killed; the LR is constant, so steps 3-4
        # after the resume (--steps 4) are those of the reference.
        proc = start([T] + common + offload + ["--steps", "100000", "--ckpt-every", "2", "--ckpt-dir",
                                               f"{d}/{tag}", "--metrics", f"{d}/{tag}.jsonl", "--threads", "1"],
                     f"{d}/{tag}.err")
        # While it lives: a second run on the same --offload-dir is refused.
        started = wait_for_steps(proc, f"{d}/{tag}.jsonl", 1)
        if started and proc.poll() is None:
            fails_clearly("a second live run on the same --offload-dir", [T] + common + offload + ["--steps", "2"],
                          "in use by another live run")
        # Kill it once step 2's checkpoint is committed.
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and latest(f"{d}/{tag}") is None:
            time.sleep(0.001)
        check("the long run was still running when killed", proc.poll() is None, f"rc={proc.poll()}")
        kill_tree(proc)
        # The checkpoint `latest` names; --resume of that step directory (it may be past step 2).
        step_dir = f"{d}/{tag}/{latest(f'{d}/{tag}')}"
        killed_at = int(step_dir.rsplit("_", 1)[1])
        end = killed_at + 2
        rc, _, err = run([T] + common + ["--steps", str(end), "--ckpt-dir", f"{d}/killed_ref", "--metrics",
                                         f"{d}/killed_ref.jsonl"])
        check("killed run's reference runs", rc == 0, err[-1500:])
        killed_ref = result(d, "killed_ref", end)
        for f in os.listdir(off):
            os.remove(os.path.join(off, f))  # the crash's offload files: useless, and gone
        rc, _, err = run([T, "train", "--resume", step_dir, "--steps", str(end), "--ckpt-dir", f"{d}/{tag}_resumed",
                          "--metrics", f"{d}/{tag}_resumed.jsonl"])
        check("killed run resumes from its checkpoint without its offload files", rc == 0, err[-1500:])
        tag = f"{tag}_resumed"
        if rc == 0:
            r = result(d, tag, end)
            check("killed + resumed run ends bitwise as the uninterrupted one",
                  r[1] == killed_ref[1] and r[2] == killed_ref[2],
                  "max |diff| %g at %s" % st.max_abs_diff(r[1], killed_ref[1]))

        # 4. Bad input.
        short = [T] + common + ["--steps", "2"]
        fails_clearly("--offload without --offload-dir", short + ["--offload", "optimizer"], "--offload-dir")
        fails_clearly("a missing --offload-dir", short + ["--offload", "optimizer", "--offload-dir",
                                                          f"{d}/does_not_exist"], f"{d}/does_not_exist")
        full, ro = f"{d}/full", f"{d}/ro"
        if os.geteuid() == 0 and try_mount(full, "size=256k"):
            try:
                fails_clearly("a full disk (256 KiB tmpfs)", short + ["--offload", "optimizer", "--offload-dir", full],
                              "has only")
                check("the full disk is left empty", os.listdir(full) == [], str(os.listdir(full)))
            finally:
                subprocess.run(["umount", full])
        else:
            print("skip full-disk check: cannot mount a small tmpfs here")
        if os.geteuid() == 0:
            mounted = try_mount(ro, "size=1m,ro")
        else:
            os.makedirs(ro)
            os.chmod(ro, 0o555)
            mounted = True
        if mounted:
            try:
                fails_clearly("a read-only --offload-dir", short + ["--offload", "optimizer", "--offload-dir", ro],
                              "Read-only file system" if os.geteuid() == 0 else "Permission denied")
            finally:
                if os.geteuid() == 0:
                    subprocess.run(["umount", ro])
        else:
            print("skip read-only check: cannot mount a read-only tmpfs here")
    finish()


if __name__ == "__main__":
    main()
