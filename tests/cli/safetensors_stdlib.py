"""Reads F32 safetensors files with the Python standard library only (for the CLI tests)."""
import array
import json
import struct


def load(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        assert e["dtype"] == "F32", f"{path}: {name} is {e['dtype']}"
        b, end = e["data_offsets"]
        a = array.array("f")
        a.frombytes(data[8 + n + b:8 + n + end])
        out[name] = a
    return out


def max_abs_diff(a, b):
    """Largest |a - b| over every tensor of two checkpoints with the same names."""
    assert a.keys() == b.keys(), f"different tensors: {sorted(set(a) ^ set(b))}"
    worst, where = 0.0, ""
    for k in a:
        d = max((abs(x - y) for x, y in zip(a[k], b[k])), default=0.0)
        if d > worst:
            worst, where = d, k
    return worst, where


def rms_diff(a, b):
    """Root mean square of a - b over every element of two checkpoints with the same names."""
    assert a.keys() == b.keys(), f"different tensors: {sorted(set(a) ^ set(b))}"
    total, n = 0.0, 0
    for k in a:
        total += sum((x - y) ** 2 for x, y in zip(a[k], b[k]))
        n += len(a[k])
    return (total / n) ** 0.5 if n else 0.0
