"""Shared helpers for the end-to-end CLI tests: run build/trident, write tiny token shards,
collect failures and exit non-zero at the end."""
import json
import os
import struct
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
failures = []


def trident(build):
    return os.path.join(build, "trident")


def mpirun():
    return os.path.join(REPO, "scripts", "trident-mpirun")


def run(cmd, timeout=600, env=None):
    e = dict(os.environ)
    e.setdefault("OMP_NUM_THREADS", "1")
    if env:
        e.update(env)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e)
    return p.returncode, p.stdout, p.stderr


def check(what, ok, detail=""):
    print(f"{'ok  ' if ok else 'FAIL'} {what}{': ' + detail if detail else ''}", flush=True)
    if not ok:
        failures.append(what)


def write_shard(path, tokens, magic=20240520, version=1, count=None):
    header = [0] * 256
    header[0], header[1], header[2] = magic, version, len(tokens) if count is None else count
    with open(path, "wb") as f:
        f.write(struct.pack("<256i", *header))
        f.write(struct.pack(f"<{len(tokens)}H", *tokens))


def synthetic_tokens(n, vocab, seed=0):
    """A learnable sequence: mostly a repeating pattern with some noise."""
    out, x = [], seed
    for i in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        out.append((i * 7 + (x >> 16) % 3) % vocab)
    return out


def descendants(pid):
    """Every live process below `pid` (children, grandchildren, ...), from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name (field 2) is in parentheses and may hold spaces; ppid follows it.
        parents[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out += kids
        frontier += kids
    return out


def rank_pids(launcher_pid):
    """{MPI rank: pid} of the ranks started under a scripts/trident-mpirun (or mpirun) process."""
    ranks = {}
    for pid in descendants(launcher_pid):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        for kv in env:
            if kv.startswith(b"OMPI_COMM_WORLD_RANK="):
                ranks[int(kv.split(b"=", 1)[1])] = pid
    return ranks


def kill_tree(proc):
    """SIGKILL a subprocess.Popen and everything below it (a launcher and its ranks)."""
    for pid in descendants(proc.pid) + [proc.pid]:
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    proc.wait()


def start(cmd, err_path):
    """Starts a run in the background, its stderr into a file (not a pipe: nothing blocks while
    the test polls)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(err_path, "w") as err:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)


def lines(path):
    try:
        with open(path) as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def wait_for_steps(proc, metrics, n, timeout=120):
    """Polls the metrics file until it holds n steps (the run is then well inside its loop)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if lines(metrics) >= n:
            return True
        time.sleep(0.01)
    return False


def latest(ckpt):
    """The step directory a checkpoint directory's `latest` names, or None."""
    try:
        return open(f"{ckpt}/latest").read().strip()
    except OSError:
        return None


def read_metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def finish():
    if failures:
        print(f"{len(failures)} check(s) failed: {failures}")
        sys.exit(1)
    print("all checks passed")
