"""Shared helpers for the end-to-end CLI tests: run build/trident, write tiny token shards,
collect failures and exit non-zero at the end."""
import json
import os
import struct
import subprocess
import sys

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


def read_metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def finish():
    if failures:
        print(f"{len(failures)} check(s) failed: {failures}")
        sys.exit(1)
    print("all checks passed")
