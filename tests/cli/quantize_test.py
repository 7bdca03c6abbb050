"""`trident quantize`, and `eval` / `generate` on its output, end to end on tiny models of both
families: int8 and q4 checkpoints load, `ckpt info` shows their format, their validation loss
stays near fp32's, greedy generation runs; and bad input gets one clear error: an unknown
format, an unsupported group size, a group size that does not divide a row, quantizing a
quantized checkpoint, training from one, an --out that is not empty, a corrupt scale tensor."""
import json
import os
import shutil
import struct
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import REPO, check, finish, run, synthetic_tokens, trident, write_shard  # noqa: E402

VOCAB = 1000
TOKENIZER = os.path.join(REPO, "data", "assets", "gpt2")


def corrupt_first(path, suffix, value):
    """Overwrites element 0 of the first tensor whose name ends in `suffix` with `value`."""
    with open(path, "r+b") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        name = next(k for k in header if k.endswith(suffix))
        f.seek(8 + n + header[name]["data_offsets"][0])
        f.write(struct.pack("<f", value))
    return name


def eval_loss(T, ck, val):
    rc, out, err = run([T, "eval", "--ckpt", ck, "--data", val, "--seq-len", "32"])
    if rc:
        return None, err[-400:]
    return json.loads(out.strip().splitlines()[-1])["val_loss"], out


def main():
    T = trident(sys.argv[1])
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(5000, VOCAB, 1))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(1000, VOCAB, 2))
        val = f"{d}/syn_val.bin"
        for model in ("tiny", "llama-tiny"):
            ck = f"{d}/{model}"
            rc, _, err = run([T, "train", "--model", model, "--data", f"{d}/syn", "--steps", "30", "--lr", "1e-2",
                              "--batch-size", "4", "--seq-len", "32", "--eval-every", "0", "--log-every", "100",
                              "--ckpt-dir", ck])
            check(f"{model}: train a tiny checkpoint", rc == 0, err[-400:])
            if rc:
                return
            fp32, detail = eval_loss(T, ck, val)
            check(f"{model}: eval of the fp32 checkpoint", fp32 is not None, detail)
            # llama-tiny's MLP is 88 wide: q4 needs a group dividing 88 (none of 32/64/128 does).
            formats = [("int8", [], 0.02)] + ([("q4", ["--group-size", "32"], 0.10)] if model == "tiny" else [])
            for fmt, extra, tolerance in formats:
                out = f"{d}/{model}_{fmt}"
                rc, o, err = run([T, "quantize", "--ckpt", ck, "--out", out, "--format", fmt, *extra])
                check(f"{model}: quantize --format {fmt}", rc == 0, err[-400:])
                if rc:
                    continue
                rc, o, err = run([T, "ckpt", "info", out])
                check(f"{model} {fmt}: ckpt info shows the format and verifies", rc == 0 and f"format {fmt}" in o,
                      (o + err)[-400:])
                loss, detail = eval_loss(T, out, val)
                # Rounding every layer matrix moves the loss a little, not a lot (fp32 ~ 6.9 here).
                check(f"{model} {fmt}: eval loss {loss} within {tolerance:.0%} of fp32 {fp32}",
                      loss is not None and abs(loss - fp32) <= tolerance * fp32, detail)
                rc, o, err = run([T, "generate", "--ckpt", out, "--tokenizer", TOKENIZER, "--prompt", " a b",
                                  "--temperature", "0", "--max-new-tokens", "70", "--print-ids"])
                ids = [l for l in err.splitlines() if l.startswith("generated ids:")]
                check(f"{model} {fmt}: greedy generation past the position table",
                      rc == 0 and ids and len(ids[0].split()) == 72, err[-400:])
            if model == "llama-tiny":
                rc, _, err = run([T, "quantize", "--ckpt", ck, "--out", f"{d}/bad", "--format", "q4",
                                  "--group-size", "32"])
                check("a group size that does not divide a row is refused, naming the matrix",
                      rc != 0 and "does not divide" in err and "mlp.down_proj" in err, err[-400:])

        ck, q8 = f"{d}/tiny", f"{d}/tiny_int8"
        bad = [
            (["--format", "int4"], "unknown quantization format 'int4'"),
            (["--format", "q4", "--group-size", "48"], "--group-size 48 is not supported"),
        ]
        for flags, message in bad:
            rc, _, err = run([T, "quantize", "--ckpt", ck, "--out", f"{d}/bad", *flags])
            check(f"quantize {' '.join(flags)} is refused", rc != 0 and message in err, err[-400:])
        rc, _, err = run([T, "quantize", "--ckpt", q8, "--out", f"{d}/bad", "--format", "q4"])
        check("quantizing a quantized checkpoint is refused", rc != 0 and "already quantized" in err, err[-400:])
        rc, _, err = run([T, "quantize", "--ckpt", ck, "--out", q8, "--format", "int8"])
        check("an --out that is not empty is refused", rc != 0 and "not empty" in err, err[-400:])
        rc, _, err = run([T, "train", "--model", "tiny", "--data", f"{d}/syn", "--steps", "1", "--init-from", q8])
        check("train --init-from a quantized checkpoint is refused", rc != 0 and "quantized checkpoint" in err,
              err[-400:])
        broken = f"{d}/broken"
        shutil.copytree(q8, broken)
        name = corrupt_first(f"{broken}/model.safetensors", ".scale", float("nan"))
        for cmd in (["eval", "--ckpt", broken, "--data", val], ["ckpt", "info", broken]):
            rc, _, err = run([T, *cmd])
            check(f"{cmd[0]} refuses a NaN in {name}", rc != 0 and name in err and "scale" in err, err[-400:])
        corrupt_first(f"{broken}/model.safetensors", ".scale", -1.0)
        rc, _, err = run([T, "eval", "--ckpt", broken, "--data", val])
        check("eval refuses a negative scale", rc != 0 and "positive" in err, err[-400:])
    finish()


if __name__ == "__main__":
    main()
