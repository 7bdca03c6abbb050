"""Preemption by signal (issue 16): SIGTERM (or any of --preempt-signals) makes every rank finish
the step, write a checkpoint at the step reached and exit 75 with the command that resumes it;
resuming continues with the losses of an uninterrupted run, bitwise. A signal that reaches one
rank stops all of them at the same step; a second signal aborts at once and leaves `latest`
naming a complete checkpoint; without --ckpt-dir the exit is 76 and says nothing was saved."""
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (check, finish, kill_tree, latest, lines, mpirun, rank_pids, read_metrics, run, start,  # noqa: E402
                     synthetic_tokens, trident, wait_for_steps, write_shard)

EXIT_PREEMPTED, EXIT_UNSAVED = 75, 76








def finish_run(proc, timeout=120):
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        return None




def resume_command(err):
    """The command after 'resume with: ' in the message, as an argument list."""
    for line in err.splitlines():
        if line.startswith("resume with: "):
            return shlex.split(line[len("resume with: "):])
    return None


def losses(path):
    """Per step: the loss, and the fp16 loss scale where there is one (the scaler's state must
    survive the stop too)."""
    return [(m["step"], m["loss"], m.get("loss_scale")) for m in read_metrics(path)]


def interrupted_then_resumed(what, T, launcher, base, d, name, sig, target, uninterrupted):
    """Run, send `sig` to `target(proc)` after a few steps, check the stop, resume, compare."""
    ckpt, metrics, err_path = f"{d}/{name}", f"{d}/{name}.jsonl", f"{d}/{name}.err"
    proc = start(launcher + base + ["--ckpt-dir", ckpt, "--metrics", metrics], err_path)
    running = wait_for_steps(proc, metrics, 10)
    if running:
        os.kill(target(proc), sig)
    rc = finish_run(proc)
    err = open(err_path).read()
    steps = lines(metrics)
    check(f"{what}: exits {EXIT_PREEMPTED} after the signal", running and rc == EXIT_PREEMPTED,
          "" if rc == EXIT_PREEMPTED else f"running={running} rc={rc}: {err[-1500:]}")
    if rc != EXIT_PREEMPTED:
        return
    check(f"{what}: stopped early", 10 <= steps < 300, f"{steps} steps")
    ok = f"after step {steps} of 300" in err
    check(f"{what}: the message names the step", ok, "" if ok else err[-600:])
    check(f"{what}: latest names the step reached", latest(ckpt) == f"step_{steps:08d}",
          f"latest {latest(ckpt)}, {steps} metrics lines")
    cmd = resume_command(err)
    want = [os.path.realpath(T), "train", "--resume", os.path.realpath(ckpt)]
    check(f"{what}: the message gives the command that resumes", cmd == want, "" if cmd == want else f"{cmd} vs {want}")
    if cmd != want:
        return
    # Exactly the printed command: the checkpoint restores the model, data, schedule, layout,
    # ckpt_dir and metrics file (appended to).
    rc, _, err = run(launcher + cmd, timeout=300)
    check(f"{what}: the resumed run finishes", rc == 0, err[-1500:] if rc else "")
    if rc:
        return
    got, want = losses(metrics), losses(uninterrupted)
    diff = [(a, b) for a, b in zip(got + [None] * (len(want) - len(got)), want) if a != b]
    check(f"{what}: interrupted + resumed losses equal the uninterrupted run's, bitwise",
          got == want and len(got) == 300, f"{len(got)} steps; first difference {diff[:1]}" if diff else "")


def main():
    build = sys.argv[1]
    T = trident(build)
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(20000, 1000, 5))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(3000, 1000, 6))
        base = [T, "train", "--model", "tiny", "--data", f"{d}/syn", "--batch-size", "4", "--seq-len", "32",
                "--steps", "300", "--lr", "3e-3", "--warmup-steps", "5", "--eval-every", "0", "--seed", "3",
                "--log-every", "1000"]

        # ---- One process.
        rc, _, err = run(base + ["--metrics", f"{d}/a.jsonl"], timeout=300)
        check("uninterrupted run", rc == 0, err[-1500:] if rc else "")
        interrupted_then_resumed("one process, SIGTERM", T, [], base, d, "b", signal.SIGTERM,
                                 lambda p: p.pid, f"{d}/a.jsonl")

        # fp16: the dynamic loss scaler's state (scale, growth and hysteresis counters) goes into
        # the checkpoint the signal writes. From 2^32 the first steps overflow and are skipped;
        # a 20-step window makes the scale move all through the run.
        fp16 = base + ["--precision", "fp16", "--loss-scale-window", "20"]
        rc, _, err = run(fp16 + ["--metrics", f"{d}/h.jsonl"], timeout=300)
        check("uninterrupted fp16 run", rc == 0, err[-1500:] if rc else "")
        scales = {m.get("loss_scale") for m in read_metrics(f"{d}/h.jsonl")} if rc == 0 else set()
        check("the fp16 run's loss scale changes during the run", len(scales) >= 3, str(sorted(scales, key=str)))
        interrupted_then_resumed("one process, fp16, SIGTERM", T, [], fp16, d, "h1", signal.SIGTERM,
                                 lambda p: p.pid, f"{d}/h.jsonl")

        long_run = [a if a != "300" else "100000" for a in base]
        proc = start(long_run + ["--metrics", f"{d}/c.jsonl"], f"{d}/c.err")
        running = wait_for_steps(proc, f"{d}/c.jsonl", 3)
        if running:
            proc.send_signal(signal.SIGINT)
        rc = finish_run(proc)
        err = open(f"{d}/c.err").read()
        ok = running and rc == EXIT_UNSAVED and "stopped by SIGINT" in err and "nothing could be saved" in err
        check(f"no --ckpt-dir: SIGINT exits {EXIT_UNSAVED} saying nothing could be saved", ok,
              "" if ok else f"rc={rc}: {err[-600:]}")

        proc = start(long_run + ["--metrics", f"{d}/e.jsonl", "--ckpt-dir", f"{d}/e", "--preempt-signals", "usr2"],
                     f"{d}/e.err")
        running = wait_for_steps(proc, f"{d}/e.jsonl", 3)
        if running:
            proc.send_signal(signal.SIGUSR2)
        rc = finish_run(proc)
        err = open(f"{d}/e.err").read()
        ok = running and rc == EXIT_PREEMPTED and "stopped by SIGUSR2" in err and latest(f"{d}/e") is not None
        check("--preempt-signals usr2: SIGUSR2 stops the run with a checkpoint", ok,
              "" if ok else f"rc={rc}: {err[-600:]}")
        rc, _, err = run(base + ["--preempt-signals", "TERM,BOGUS"])
        ok = rc != 0 and "--preempt-signals" in err and "BOGUS" in err
        check("an unknown signal name is refused naming the flag", ok, "" if ok else err[-400:])

        # A second signal aborts at once (exit 128 + 15). With a checkpoint every step, the run
        # spends most of its time saving, so the two signals often land inside a save; whatever
        # they interrupt, `latest` must name a complete checkpoint that loads.
        for attempt in range(3):
            ckpt, metrics = f"{d}/f{attempt}", f"{d}/f{attempt}.jsonl"
            proc = start(long_run + ["--metrics", metrics, "--ckpt-dir", ckpt, "--ckpt-every", "1"],
                         f"{d}/f{attempt}.err")
            running = wait_for_steps(proc, metrics, 5 + 7 * attempt)
            second = signal.SIGINT if attempt == 0 else signal.SIGTERM
            if running:
                proc.send_signal(signal.SIGTERM)
                if second == signal.SIGTERM:
                    # Two equal signals sent back to back can merge into one pending signal (the
                    # kernel keeps one per number), so the second waits for the first's
                    # acknowledgement. SIGTERM + SIGINT cannot merge: sent back to back.
                    while proc.poll() is None and "stop signal received" not in open(f"{d}/f{attempt}.err").read():
                        time.sleep(0.0005)
                proc.send_signal(second)
            rc = finish_run(proc)
            err = open(f"{d}/f{attempt}.err").read()
            # The exit code is 128 + the signal handled second; two pending signals are handled
            # in the kernel's order (lowest number first), so SIGTERM + SIGINT may end as either.
            codes = {128 + signal.SIGTERM, 128 + second}
            ok = running and rc in codes and "second stop signal" in err
            check(f"SIGTERM then {signal.Signals(second).name} (try {attempt + 1}) aborts at once with exit "
                  f"{' or '.join(map(str, sorted(codes)))}", ok, "" if ok else f"rc={rc}: {err[-600:]}")
            name = latest(ckpt)
            info_rc, _, info_err = run([T, "ckpt", "info", ckpt])
            check(f"second signal (try {attempt + 1}): latest ({name}) is a complete checkpoint",
                  name is not None and info_rc == 0, info_err[-400:] if info_rc else "")
            incomplete = [e for e in os.listdir(ckpt) if e.startswith("step_") and
                          sorted(os.listdir(f"{ckpt}/{e}")) != ["config.json", "model.safetensors",
                                                                "optimizer.safetensors", "trident.json"]]
            check(f"second signal (try {attempt + 1}): no incomplete step directory", not incomplete,
                  str(incomplete))

        # ---- Two ranks under scripts/trident-mpirun.
        launcher = [mpirun(), "-n", "2"]
        base2 = base + ["--dp", "2"]
        rc, _, err = run(launcher + base2 + ["--metrics", f"{d}/a2.jsonl"], timeout=300)
        check("uninterrupted 2-rank run", rc == 0, err[-1500:] if rc else "")
        # SIGTERM to the launcher reaches every rank (as SIGUSR1, which mpirun forwards).
        interrupted_then_resumed("2 ranks, SIGTERM to trident-mpirun", T, launcher, base2, d, "b2",
                                 signal.SIGTERM, lambda p: p.pid, f"{d}/a2.jsonl")
        # SIGTERM to rank 1 only: the ranks agree at the end of the step, and rank 0 saves too.
        interrupted_then_resumed("2 ranks, SIGTERM to rank 1 only", T, launcher, base2, d, "g2",
                                 signal.SIGTERM, lambda p: rank_pids(p.pid)[1], f"{d}/a2.jsonl")


if __name__ == "__main__":
    main()
    finish()
