#!/usr/bin/python3
"""Splits one model.safetensors into Hugging Face shards, model-0000N-of-0000M.safetensors plus
model.safetensors.index.json, the way save_pretrained(max_shard_size=...) does (huggingface_hub's
split_state_dict_into_shards_factory):

  - tensors are taken in order (here: the source file's data order) and added to the current
    shard; a tensor that would take the shard over max_shard_size starts a new one first;
  - a tensor larger than max_shard_size on its own gets a shard of its own at once, while the
    shard being filled stays open for the tensors after it (so shard order can differ from
    tensor order, exactly as in HF);
  - one shard only: written as model.safetensors, no index;
  - the index is {"metadata": {"total_size": bytes of all tensors}, "weight_map": {name: file}},
    dumped with indent=2, sort_keys=True and a trailing newline; each shard carries
    __metadata__ {"format": "pt"}.

Any dtype is copied byte for byte (standard library only, no numpy needed).

Usage: shard_safetensors.py SRC.safetensors OUT_DIR [--max-shard-size 5GB]
Sizes: an integer number of bytes, or digits with KB/MB/GB (powers of 10) or KiB/MiB/GiB."""
import argparse
import json
import os
import re
import struct
import sys

INDEX_NAME = "model.safetensors.index.json"


def parse_size(size):
    """HF's parse_size_to_int: 5GB = 5 * 10**9, 5GiB = 5 * 2**30, a plain integer is bytes."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)?\s*", size)
    if not m:
        raise ValueError(f"cannot parse size '{size}': use e.g. 5GB, 200MiB or a number of bytes")
    units = {None: 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
    return int(float(m.group(1)) * units[m.group(2)])


def read_raw(path):
    """[(name, dtype, shape, bytes)] in data order, and the __metadata__ dict."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    entries = sorted(header.items(), key=lambda kv: tuple(kv[1]["data_offsets"]))
    return [(k, e["dtype"], e["shape"], data[base + e["data_offsets"][0]:base + e["data_offsets"][1]])
            for k, e in entries], meta


def write_raw(path, tensors, metadata):
    header, offset = {"__metadata__": metadata}, 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for t in tensors:
            f.write(t[3])


def split(tensors, max_shard_size):
    """Lists of tensors, one per shard (HF's algorithm, see the module docstring)."""
    shards, current, current_size = [], [], 0
    for t in tensors:
        size = len(t[3])
        if size > max_shard_size:
            shards.append([t])
            continue
        if current_size + size > max_shard_size and current:
            shards.append(current)
            current, current_size = [], 0
        current.append(t)
        current_size += size
    if current:
        shards.append(current)
    return shards


def shard(src, out_dir, max_shard_size="5GB"):
    """Writes the shards (and the index when there is more than one) into out_dir; returns
    the written file names, the index last."""
    tensors, _ = read_raw(src)
    shards = split(tensors, parse_size(max_shard_size))
    os.makedirs(out_dir, exist_ok=True)
    if len(shards) <= 1:
        write_raw(os.path.join(out_dir, "model.safetensors"), tensors, {"format": "pt"})
        return ["model.safetensors"]
    names, weight_map = [], {}
    for i, group in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        write_raw(os.path.join(out_dir, name), group, {"format": "pt"})
        names.append(name)
        for t in group:
            weight_map[t[0]] = name
    index = {"metadata": {"total_size": sum(len(t[3]) for t in tensors)}, "weight_map": weight_map}
    with open(os.path.join(out_dir, INDEX_NAME), "w") as f:
        f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return names + [INDEX_NAME]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="a model.safetensors file")
    p.add_argument("out_dir", help="directory to write the shards and index into")
    p.add_argument("--max-shard-size", default="5GB", help="as save_pretrained's max_shard_size (default 5GB)")
    a = p.parse_args()
    try:
        for name in shard(a.src, a.out_dir, a.max_shard_size):
            print(os.path.join(a.out_dir, name))
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"shard_safetensors: {e}")


if __name__ == "__main__":
    main()
