"""A node whose link drops during a run (ip link set down on its port of the simulated network's
bridge) ends the job with a named error, not a hang: dp 2 over 2 nodes, the link of node 1 goes
down after the first step, and mpirun must exit non-zero within TRIDENT_COMM_TIMEOUT plus the
time the nodes' TCP takes to give up on a silent peer (tests/cluster/netns.py sets ~6 s), with
either Trident's watchdog error naming the collective and the missing rank, or OpenMPI's
"lost communication with a remote daemon" when its own keepalive notices first."""
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "cli"))
from harness import check, finish, synthetic_tokens, trident, write_shard  # noqa: E402
from netns import Cluster, require_namespaces  # noqa: E402

TIMEOUT_S = 5
# Watchdog + TCP giving up (~6 s at tcp_retries2=4, backing off from 200 ms) + OpenMPI's
# keepalive (5 s idle + 3 x 1 s) + tearing down, with room for a loaded 2-core machine.
LIMIT_S = TIMEOUT_S + 45


def main():
    build = sys.argv[1]
    require_namespaces()
    with tempfile.TemporaryDirectory() as d, Cluster(2) as c:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(30000, 1000, 11))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(3000, 1000, 12))
        metrics = f"{d}/m.jsonl"
        argv = [trident(build), "train", "--model", "tiny", "--data", f"{d}/syn", "--batch-size", "16",
                "--seq-len", "32", "--steps", "100000", "--eval-every", "0", "--dp", "2",
                "--metrics", metrics, "--log-every", "1000"]
        p = subprocess.Popen(c.mpirun_argv(2, argv, 1), env=c.env({"TRIDENT_COMM_TIMEOUT": str(TIMEOUT_S)}),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            start = time.time()
            while time.time() - start < 120 and p.poll() is None:
                if os.path.exists(metrics) and os.path.getsize(metrics) > 0:
                    break
                time.sleep(0.1)
            check("the run trains across 2 nodes before the link drops", p.poll() is None and
                  os.path.exists(metrics) and os.path.getsize(metrics) > 0)
            c.link_down(1)
            dropped = time.time()
            try:
                _, err = p.communicate(timeout=LIMIT_S)
                hung = False
            except subprocess.TimeoutExpired:
                hung = True
                p.kill()
                _, err = p.communicate()
            took = time.time() - dropped
            print(f"job ended {took:.1f} s after the link dropped, exit code {p.returncode}")
            check(f"the job ends within {LIMIT_S} s of the link dropping", not hung, err[-2000:] if hung else "")
            check("it ends with a non-zero exit code", p.returncode != 0, str(p.returncode))
            named = ("error: watchdog:" in err and "did not complete within" in err) or \
                "lost communication with a remote daemon" in err
            check("with a named error (the watchdog's or OpenMPI's lost daemon)", named, err[-2000:] if not named else "")
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    check("no namespace left behind", not c.remaining(), f"{c.remaining()}")


if __name__ == "__main__":
    main()
    finish()
