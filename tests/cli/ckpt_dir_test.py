"""Checkpoint directory ownership (issue 16): a second run on a --ckpt-dir in use is refused
naming the owner (on one rank and on two) and the first run carries on unaffected; the lock
of a run killed with SIGKILL is taken over with a note; leftovers of an interrupted save are
removed at start-up; --keep-last keeps the newest checkpoints; `latest` never moves
backwards (a run that would write older checkpoints is refused before it trains)."""
import os
import signal
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (check, finish, kill_tree, latest, lines, mpirun, run, start, synthetic_tokens, trident,  # noqa: E402
                     wait_for_steps, write_shard)










def step_dirs(ckpt):
    return sorted(e for e in os.listdir(ckpt) if e.startswith("step_"))


def main():
    build = sys.argv[1]
    T = trident(build)
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(20000, 1000, 11))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(3000, 1000, 12))
        base = [T, "train", "--model", "tiny", "--data", f"{d}/syn", "--batch-size", "4", "--seq-len", "32",
                "--eval-every", "0", "--log-every", "1000"]

        # ---- Two runs on one directory: the second is refused, the first is unaffected.
        a = start(base + ["--steps", "100000", "--ckpt-dir", f"{d}/x", "--ckpt-every", "10",
                          "--metrics", f"{d}/a.jsonl"], f"{d}/a.err")
        running = wait_for_steps(a, f"{d}/a.jsonl", 25)
        check("first run is training", running, open(f"{d}/a.err").read()[-800:] if not running else "")
        for what, launcher in [("one rank", []), ("two ranks", [mpirun(), "-n", "2"])]:
            flags = ["--dp", "2"] if launcher else []
            rc, out, err = run(launcher + base + flags + ["--steps", "50", "--ckpt-dir", f"{d}/x"], timeout=120)
            ok = rc != 0 and "is in use by another run" in err and f"pid {a.pid} on host" in err
            check(f"second run on the directory is refused naming the owner ({what})", ok,
                  "" if ok else f"rc={rc}: {err[-800:]}")
        # (Rank 1's own copy of the message is not required: mpirun may end it as soon as
        # rank 0 aborts, before it prints.)
        check("the first run is still training", a.poll() is None)
        a.send_signal(signal.SIGTERM)
        rc = a.wait(timeout=120)
        steps = lines(f"{d}/a.jsonl")
        check("the first run stops normally and its checkpoint names its last step",
              rc == 75 and latest(f"{d}/x") == f"step_{steps:08d}", f"rc={rc}, latest {latest(f'{d}/x')}, {steps} steps")
        rc, _, err = run([T, "ckpt", "info", f"{d}/x"])
        check("the first run's checkpoint loads", rc == 0, err[-400:] if rc else "")
        check("the lock file is emptied when a run ends", open(f"{d}/x/trident.lock").read() == "")

        # ---- A run killed with SIGKILL: its lock is stale and the next run takes it over.
        c = start(base + ["--steps", "100000", "--ckpt-dir", f"{d}/y", "--ckpt-every", "5",
                          "--metrics", f"{d}/c.jsonl"], f"{d}/c.err")
        running = wait_for_steps(c, f"{d}/c.jsonl", 12)
        kill_tree(c)
        check("a run killed with SIGKILL leaves its pid in the lock",
              running and f'"pid":{c.pid}' in open(f"{d}/y/trident.lock").read())
        os.makedirs(f"{d}/y/.step_00000099.tmp")
        with open(f"{d}/y/.step_00000099.tmp/model.safetensors", "wb") as f:
            f.write(b"partial")
        resume_at = int(latest(f"{d}/y")[5:])
        rc, _, err = run(base + ["--steps", str(resume_at + 3), "--resume", f"{d}/y", "--ckpt-dir", f"{d}/y"])
        check("the next run on the directory succeeds", rc == 0, err[-800:] if rc else "")
        ok = "took over" in err and f"pid {c.pid} on host" in err and "no longer running" in err
        check("it takes over the stale lock with a note naming the dead owner", ok, "" if ok else err[-800:])
        ok = ".step_00000099.tmp" in err and "never finished" in err and not os.path.exists(f"{d}/y/.step_00000099.tmp")
        check("a staging folder left by an interrupted save is removed with a note", ok, "" if ok else err[-800:])
        check("no other leftovers remain", not [e for e in os.listdir(f"{d}/y") if e.startswith(".")],
              str(os.listdir(f"{d}/y")))

        # ---- --keep-last, and latest never moves backwards.
        rc, _, err = run(base + ["--steps", "10", "--ckpt-dir", f"{d}/z", "--ckpt-every", "2", "--keep-last", "2"])
        check("--keep-last 2 run", rc == 0, err[-800:] if rc else "")
        check("--keep-last 2 keeps the two newest checkpoints", step_dirs(f"{d}/z") == ["step_00000008", "step_00000010"]
              and latest(f"{d}/z") == "step_00000010", str(os.listdir(f"{d}/z")))
        ok = "removed step_00000006 (--keep-last 2)" in err
        check("--keep-last says what it removed", ok, "" if ok else err[-600:])
        rc, _, err = run(base + ["--steps", "4", "--ckpt-dir", f"{d}/z"])
        ok = rc != 0 and "already holds checkpoints up to step 10" in err and "--resume" in err
        check("a new run into a directory with later checkpoints is refused", ok, "" if ok else err[-600:])
        rc, _, err = run(base + ["--steps", "12", "--resume", f"{d}/z/step_00000008", "--ckpt-dir", f"{d}/z"])
        ok = rc != 0 and "starts at step 8" in err
        check("resuming an older step into the same directory is refused", ok, "" if ok else err[-600:])
        check("latest did not move", latest(f"{d}/z") == "step_00000010")


if __name__ == "__main__":
    main()
    finish()
