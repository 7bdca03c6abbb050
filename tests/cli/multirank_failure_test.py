"""Multi-rank bad input and failures (issues 5 and 8): a world size that does not match the
layout, a layout that does not divide the model, ranks started with different configs, a
rank killed mid-step (mpirun names it) and a rank that hangs (Trident's watchdog names it)
each end the whole job with a clear error -- never a hang."""
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import check, finish, kill_tree, mpirun, rank_pids, run, synthetic_tokens, trident, write_shard  # noqa: E402


def expect_job_error(what, cmd, *fragments, env=None):
    start = time.time()
    rc, out, err = run(cmd, timeout=240, env=env)
    text = out + err
    ok = rc != 0 and all(f in text for f in fragments) and "Segmentation" not in text
    check(what, ok, f"rc={rc}, {time.time() - start:.1f} s; missing {[f for f in fragments if f not in text]}: "
          f"{text.strip()[-700:]}" if not ok else f"{time.time() - start:.1f} s")


def main():
    build = sys.argv[1]
    T = trident(build)
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(20000, 1000, 41))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(3000, 1000, 42))
        base = [T, "train", "--model", "tiny", "--data", f"{d}/syn", "--batch-size", "8", "--seq-len", "32",
                "--eval-every", "0", "--log-every", "100"]
        expect_job_error("world size that does not match dp x tp x pp",
                         [mpirun(), "-n", "4", *base, "--steps", "2", "--dp", "2", "--tp", "2", "--pp", "2"],
                         "pp(2) * edp(2) * ep(1) * tp(2) (dp = edp * ep = 2) has 8 ranks", "world size 4")
        expect_job_error("tp that does not divide the heads",
                         [mpirun(), "-n", "3", *base, "--steps", "2", "--tp", "3"], "n_head", "tp")
        expect_job_error("more pipeline stages than layers",
                         [mpirun(), "-n", "2", *base, "--steps", "2", "--pp", "2", "--n-layer", "1"], "layer")
        expect_job_error("batch not divisible by dp",
                         [mpirun(), "-n", "3", *base, "--steps", "2", "--dp", "3"], "not divisible by dp 3")
        # Ranks launched with different configurations: an MPMD launch with another --lr on rank 1.
        expect_job_error("ranks started with different configs",
                         [mpirun(), "-n", "1", *base, "--steps", "2", "--dp", "2", ":",
                          "-n", "1", *base, "--steps", "2", "--dp", "2", "--lr", "1e-3"],
                         "run configuration")
        # A rank killed mid-run: mpirun sees the death at once and ends the job (Trident gets no
        # chance to speak); its report must name the rank that was killed.
        env = {"TRIDENT_COMM_TIMEOUT": "20"}
        rank, ended, rc, out = signal_a_rank(base + ["--steps", "100000", "--dp", "2"], 1, signal.SIGKILL, env)
        check("a rank killed mid-run ends the job (no hang)", ended and rc != 0, f"rc={rc}: {out.strip()[-400:]}")
        check("the launcher's report names the killed rank", f"process rank {rank} " in out and "signal 9" in out,
              out.strip()[-400:])
        # A rank that stops answering (SIGSTOP: alive, never reaching the next allreduce): nothing
        # outside Trident notices, so the watchdog of the rank waiting for it must end the job and
        # name it (operation, group, the rank that did not arrive and that it did not answer).
        env = {"TRIDENT_COMM_TIMEOUT": "5"}
        rank, ended, rc, out = signal_a_rank(base + ["--steps", "100000", "--dp", "2"], 1, signal.SIGSTOP, env)
        other = 1 - rank
        check("a hung rank ends the job through the watchdog (no hang)", ended and rc != 0,
              f"rc={rc}: {out.strip()[-400:]}")
        # (The operation and group depend on where the rank stopped: a dp bucket, the world's
        # grad-norm sum, the tied rows' all_gather.)
        want = [f"[rank {other}] error: watchdog: ", "did not complete within 5.0 s",
                f"ranks that did not arrive: [{rank}]", f"rank {rank} did not answer"]
        check("Trident's watchdog names the hung rank", all(w in out for w in want),
              f"missing {[w for w in want if w not in out]}: {out.strip()[-600:]}")


def signal_a_rank(cmd, rank, sig, env):
    """Starts a 2-rank run, sends `sig` to world rank `rank` after 4 s; returns (rank, ended
    within 120 s, return code, output)."""
    e = dict(os.environ, OMP_NUM_THREADS="1", **env)
    p = subprocess.Popen([mpirun(), "-n", "2", *cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=e)
    time.sleep(4)
    # p is scripts/trident-mpirun; the ranks are below its mpirun.
    target = rank_pids(p.pid).get(rank)
    if target is None:
        kill_tree(p)
        return rank, False, None, f"no process of world rank {rank} under the launcher"
    os.kill(target, sig)
    try:
        out, _ = p.communicate(timeout=120)
        return rank, True, p.returncode, out
    except subprocess.TimeoutExpired:
        kill_tree(p)
        return rank, False, None, ""

if __name__ == "__main__":
    main()
    finish()
