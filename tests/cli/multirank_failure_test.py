"""Multi-rank bad input and failures (issues 5 and 8): a world size that does not match the
layout, a layout that does not divide the model, ranks started with different configs and a
rank killed mid-step each end the whole job with a clear error -- never a hang."""
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
                         "dp(2) * tp(2) * pp(2) = 8", "world size 4")
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
        # A rank killed mid-run: the job ends (mpirun or the comm watchdog) instead of hanging.
        env = dict(os.environ, OMP_NUM_THREADS="1", TRIDENT_COMM_TIMEOUT="20")
        p = subprocess.Popen([mpirun(), "-n", "2", *base, "--steps", "100000", "--dp", "2"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        time.sleep(4)
        ranks = rank_pids(p.pid)  # p is scripts/trident-mpirun; the ranks are below its mpirun
        killed = False
        if 1 in ranks:
            os.kill(ranks[1], signal.SIGKILL)
            killed = True
        try:
            out, _ = p.communicate(timeout=120)
            ended = True
        except subprocess.TimeoutExpired:
            kill_tree(p)
            out, ended = "", False
        check("a rank killed mid-run ends the job (no hang)", killed and ended and p.returncode != 0,
              f"killed={killed} ended={ended} rc={p.returncode}: {out.strip()[-400:]}")
        check("the failure names the dead rank", "rank" in out and ("signal" in out or "did not arrive" in out),
              out.strip()[-400:])


if __name__ == "__main__":
    main()
    finish()
