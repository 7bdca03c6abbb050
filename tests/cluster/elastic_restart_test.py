"""Elastic restart across simulated nodes: `scripts/trident-mpirun --max-restarts 1` runs dp 4
over 4 nodes (one rank each) with a checkpoint every step; once a few checkpoints exist, the
rank on node 2 is killed with SIGKILL. mpirun then fails, the supervisor logs the restart and
starts the same command line again with --resume CKPT_DIR, and the run finishes with final
weights bitwise equal to an uninterrupted run of the same layout on the same nodes (resuming is
exact at one layout: data order and RNG are functions of (seed, step), and the checkpoint holds
weights, moments and step).

Then the same at a smaller world: the restart runs on 2 ranks (--restart-np 2 --restart-args
"--dp 2", as after losing two nodes); a checkpoint is layout-free, so the final weights match
the uninterrupted run up to summation order, within tests/cli/layout_matrix_test.py's bounds
(losses 2e-5 relative; weights 1% of sum(lr))."""
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "cli"))
from harness import check, finish, read_metrics, synthetic_tokens, trident, write_shard  # noqa: E402
import safetensors_stdlib as st  # noqa: E402
from netns import Cluster, require_namespaces  # noqa: E402

STEPS = 16
KILL_AFTER = 3  # checkpoints written before the kill
LR = 3e-3


def trident_pids(cluster, node):
    """Trident ranks running on a node: the processes inside its namespace named trident."""
    out = subprocess.run(["ip", "netns", "pids", cluster.ns[node]], capture_output=True, text=True).stdout
    pids = []
    for pid in out.split():
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "trident":
                    pids.append(int(pid))
        except OSError:
            pass
    return pids


def latest_step(ckpt):
    try:
        with open(os.path.join(ckpt, "latest")) as f:
            return int(f.read().strip().rsplit("_", 1)[1])
    except (OSError, ValueError, IndexError):
        return 0


def main():
    build = sys.argv[1]
    require_namespaces()
    T = trident(build)
    with tempfile.TemporaryDirectory() as d, Cluster(4) as c:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(30000, 1000, 11))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(3000, 1000, 12))
        env = {"TRIDENT_COMM_TIMEOUT": "60"}

        def train(tag, extra=()):
            return [T, "train", "--model", "tiny", "--data", f"{d}/syn", "--batch-size", "16", "--seq-len",
                    "32", "--steps", str(STEPS), "--lr", str(LR), "--lr-schedule", "cosine", "--eval-every",
                    "0", "--seed", "5", "--log-every", "1000", "--dp", "4", "--zero", "1",
                    "--ckpt-dir", f"{d}/{tag}", "--ckpt-every", "1", "--metrics", f"{d}/{tag}.jsonl", *extra]

        rc, _, err = c.mpirun(4, train("whole"), 1, timeout=240, env=env)
        check("uninterrupted dp 4 run over 4 nodes", rc == 0, err[-1500:] if rc else "")
        if rc:
            return
        whole = st.load(f"{d}/whole/step_{STEPS:08d}/model.safetensors")
        whole_loss = [m["loss"] for m in read_metrics(f"{d}/whole.jsonl")]

        for tag, supervisor in [("same", ["--max-restarts", "1"]),
                                ("smaller", ["--max-restarts", "1", "--restart-np", "2",
                                             "--restart-args", "--dp 2"])]:
            argv = c.mpirun_argv(4, train(tag), 1, supervisor=supervisor)
            p = subprocess.Popen(argv, env=c.env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                killed = []
                start = time.time()
                while p.poll() is None and time.time() - start < 120:
                    if latest_step(f"{d}/{tag}") >= KILL_AFTER:
                        killed = trident_pids(c, 2)
                        for pid in killed[:1]:
                            os.kill(pid, signal.SIGKILL)
                        break
                    time.sleep(0.02)
                at = latest_step(f"{d}/{tag}")
                check(f"{tag}: a rank on node 2 was killed midway (at checkpoint {at} of {STEPS})",
                      bool(killed) and at < STEPS, f"pids {killed}")
                _, err = p.communicate(timeout=240)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            restarts = [line for line in err.splitlines() if line.startswith("trident-mpirun: the job failed")]
            print(f"{tag}: exit code {p.returncode}; {restarts}")
            check(f"{tag}: the supervised run finishes", p.returncode == 0, err[-2500:] if p.returncode else "")
            check(f"{tag}: one restart, logged, resuming from the checkpoint directory",
                  len(restarts) == 1 and f"from {d}/{tag} (step_" in restarts[0] and "resumed from" in err,
                  f"{restarts}")
            final = f"{d}/{tag}/step_{STEPS:08d}/model.safetensors"
            if p.returncode or not os.path.exists(final):
                continue
            w_dev, where = st.max_abs_diff(st.load(final), whole)
            # The metrics file is appended to on resume: the last STEPS entries by step.
            by_step = {m["step"]: m["loss"] for m in read_metrics(f"{d}/{tag}.jsonl")}
            loss = [by_step.get(s) for s in range(1, STEPS + 1)]
            if tag == "same":
                check("same: final weights bitwise equal to the uninterrupted run's", w_dev == 0.0,
                      f"max |dw| {w_dev:.3e} at {where}")
                check("same: every step's loss equal to the uninterrupted run's", loss == whole_loss,
                      "" if loss == whole_loss else f"{loss} vs {whole_loss}")
            else:
                loss_dev = max(abs(a - b) / abs(b) for a, b in zip(loss, whole_loss)) if None not in loss else 1
                print(f"smaller: loss rel dev {loss_dev:.2e}, weight abs dev {w_dev:.2e} ({where})")
                check("smaller: restarted on 2 ranks", "on 2 ranks" in restarts[0] and "dp 2 x" in err, restarts[0])
                check("smaller: losses match the uninterrupted run's", loss_dev < 2e-5,
                      "" if loss_dev < 2e-5 else f"{loss} vs {whole_loss}")
                check("smaller: final weights match the uninterrupted run's", w_dev < 0.01 * STEPS * LR,
                      f"{w_dev:.2e} at {where}")
    check("no namespace left behind", not c.remaining(), f"{c.remaining()}")


if __name__ == "__main__":
    main()
    finish()
