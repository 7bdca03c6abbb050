"""The directories `trident quantize`, `dequantize` and `merge-lora` write record their model file's CRC-32C
(config.json "trident_checksums", ckpt/checksums.h) as train's checkpoints do in trident.json, and every
loader verifies it: a flipped byte of a q4 file's packed codes (which no dtype, shape or scale check can
see: every byte is a valid pair of codes) is refused by eval, generate, ckpt info, dequantize and a QLoRA
train, naming the file and what to do; the same for a dequantized and a merged fp32 output. An older
quantized directory without the record still loads (ckpt info says none is recorded)."""
import json
import os
import shutil
import struct
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import check, finish, latest, run, synthetic_tokens, trident, write_shard  # noqa: E402

VOCAB, BATCH, SEQ = 512, 8, 32
MODEL = ["--model", "tiny", "--n-embd", "64", "--vocab-size", str(VOCAB)]
LORA = ["--lora-rank", "4", "--lora-alpha", "8", "--lora-targets", "c_attn,attn.c_proj,c_fc,mlp.c_proj"]
KEY = "trident_checksums"


def flip_byte(path, tensor):
    """XOR one byte in the middle of `tensor`'s data (0x11: both nibbles of a q4 byte change, still valid codes)."""
    with open(path, "r+b") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        begin, end = header[tensor]["data_offsets"]
        at = 8 + n + (begin + end) // 2
        f.seek(at)
        b = f.read(1)[0]
        f.seek(at)
        f.write(bytes([b ^ 0x11]))


def main():
    T = trident(sys.argv[1])
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(20000, VOCAB, 3))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(2000, VOCAB, 4))
        val = f"{d}/syn_val.bin"
        common = ["--data", f"{d}/syn", "--batch-size", str(BATCH), "--seq-len", str(SEQ), "--eval-every", "0",
                  "--log-every", "100", "--threads", "1", "--seed", "5"]
        rc, _, err = run([T, "train"] + MODEL + ["--steps", "2", "--ckpt-dir", f"{d}/base"] + common)
        check("train a base", rc == 0, err[-600:])
        if rc:
            return
        base = f"{d}/base/{latest(f'{d}/base')}"
        q = f"{d}/q"
        rc, out, err = run([T, "quantize", "--ckpt", base, "--out", q, "--format", "q4", "--group-size", "32"])
        check("quantize q4 g32", rc == 0, (out + err)[-600:])
        if rc:
            return
        sums = json.load(open(f"{q}/config.json")).get(KEY, {})
        check("quantize records model.safetensors' crc32c in config.json",
              list(sums) == ["model.safetensors"] and sums["model.safetensors"].startswith("crc32c:"), str(sums))
        rc, out, err = run([T, "ckpt", "info", q])
        check("ckpt info of the q4 output: its file matches the record", rc == 0 and "1 file(s) match" in out,
              (out + err)[-400:])

        bad = f"{d}/q_bad"
        shutil.copytree(q, bad)
        flip_byte(f"{bad}/model.safetensors", "h.0.attn.c_attn.weight")

        def refused(what, cmd, extra=""):
            rc, out, err = run(cmd)
            ok = (rc != 0 and f"{bad}/model.safetensors is corrupt" in err and "Write it again" in err and
                  "val_loss" not in out and "Segmentation" not in err)
            check(f"{what}: refused, naming the file and what to do{extra}", ok, (out + err)[-500:])

        refused("eval of a q4 file with one flipped code byte",
                [T, "eval", "--ckpt", bad, "--data", val, "--seq-len", str(SEQ)])
        refused("generate", [T, "generate", "--ckpt", bad, "--max-new-tokens", "2"])
        refused("ckpt info", [T, "ckpt", "info", bad])
        refused("dequantize", [T, "dequantize", "--ckpt", bad, "--out", f"{d}/deq_bad"])
        check("... which wrote nothing", not os.path.exists(f"{d}/deq_bad") or not os.listdir(f"{d}/deq_bad"))
        refused("train (QLoRA on it)", [T, "train", "--init-from", bad] + LORA + ["--steps", "1"] + common)

        # The fp32 outputs: dequantize and merge-lora.
        deq = f"{d}/deq"
        rc, out, err = run([T, "dequantize", "--ckpt", q, "--out", deq])
        check("dequantize", rc == 0, (out + err)[-400:])
        rc, _, err = run([T, "train", "--init-from", base] + LORA + ["--steps", "2", "--lr", "1e-2",
                                                                      "--ckpt-dir", f"{d}/lora"] + common)
        check("a LoRA run", rc == 0, err[-400:])
        merged = f"{d}/merged"
        rc2, out2, err2 = run([T, "merge-lora", "--base", base, "--adapter", f"{d}/lora", "--out", merged])
        check("merge-lora", rc2 == 0, (out2 + err2)[-400:])
        if rc or rc2:
            return
        for name, out_dir in (("dequantize", deq), ("merge-lora", merged)):
            sums = json.load(open(f"{out_dir}/config.json")).get(KEY, {})
            check(f"{name}'s output records its crc32c", list(sums) == ["model.safetensors"], str(sums))
            rc, out, err = run([T, "ckpt", "info", out_dir])
            check(f"{name}'s output: ckpt info verifies it", rc == 0 and "1 file(s) match" in out, (out + err)[-400:])
            bad = f"{out_dir}_bad"
            shutil.copytree(out_dir, bad)
            flip_byte(f"{bad}/model.safetensors", "h.0.mlp.c_fc.weight")
            refused(f"eval of {name}'s output with one flipped byte",
                    [T, "eval", "--ckpt", bad, "--data", val, "--seq-len", str(SEQ)])

        # An older quantized directory (no record) still loads.
        old = f"{d}/q_old"
        shutil.copytree(q, old)
        config = json.load(open(f"{old}/config.json"))
        config.pop(KEY)
        json.dump(config, open(f"{old}/config.json", "w"))
        rc, out, err = run([T, "eval", "--ckpt", old, "--data", val, "--seq-len", str(SEQ)])
        check("a q4 directory without the record (older) still evaluates", rc == 0 and "val_loss" in out, err[-400:])
        rc, out, err = run([T, "ckpt", "info", old])
        check("... and ckpt info says it records none", rc == 0 and "no checksums recorded" in out, (out + err)[-300:])


if __name__ == "__main__":
    main()
    finish()
