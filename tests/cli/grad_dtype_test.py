"""--grad-dtype fp32|bf16|fp16 end to end (issue 13): ZeRO-2/3's gradient shard stored in 16 bits
(parallel/grad_shard.h). The engine-level bitwise and bounded comparisons are
tests/mpi/dp_grad16_test.cpp; here, through the CLI:

1. Bad input, each one clear error: an unknown dtype (naming fp32, bf16, fp16); a 16-bit dtype that
   does not match --precision (naming both flags); 16-bit gradients at --zero 1 (naming --zero 2).
2. tiny, one process, --precision bf16 --zero 2, 2 micro-batches, fp32 vs bf16 gradients: the
   start-up line says "gradients at rest in bf16", the first loss is equal (before any update), the
   runs differ later (the storage rounds), and the metrics' gradients peak falls by exactly 2 bytes
   a shard element (at one rank the shard is all 136,512 allocated elements of tiny; the fp32
   buckets are the same in both runs, so the peaks differ by the shard alone)."""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import check, finish, read_metrics, run, synthetic_tokens, trident, write_shard  # noqa: E402

STEPS = 3
BATCH, SEQ, VOCAB = 8, 32, 1000
TINY_ALLOCATED = 1024 * 32 + 64 * 32 + 8 * (12 * 32 * 32 + 13 * 32) + 2 * 32


def main():
    T = trident(sys.argv[1])
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(20000, VOCAB, 11))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(3000, VOCAB, 12))
        common = [T, "train", "--model", "tiny", "--data", f"{d}/syn", "--batch-size", str(BATCH), "--seq-len", str(SEQ),
                  "--steps", str(STEPS), "--lr", "3e-3", "--lr-schedule", "constant", "--eps", "1e-6", "--eval-every",
                  "0", "--seed", "5", "--log-every", "100"]

        def one_error(args, *words):
            rc, _, err = run(common + args)
            ok = rc != 0 and all(w in err for w in words) and len(err.strip().splitlines()) <= 3
            check(f"{' '.join(args)}: one clear error naming {', '.join(words)}", ok, err.strip()[-600:])

        one_error(["--grad-dtype", "fp8"], "fp32", "bf16", "fp16")
        one_error(["--grad-dtype", "bf16", "--zero", "2"], "--grad-dtype bf16", "--precision bf16")
        one_error(["--grad-dtype", "fp16", "--precision", "bf16", "--zero", "2"], "--grad-dtype fp16", "--precision fp16")
        one_error(["--grad-dtype", "bf16", "--precision", "bf16", "--zero", "1"], "--grad-dtype bf16", "--zero 2")

        got = {}
        for dtype in ["fp32", "bf16"]:
            rc, _, err = run(common + ["--precision", "bf16", "--zero", "2", "--micro-batches", "2", "--grad-dtype", dtype,
                                       "--metrics", f"{d}/{dtype}.jsonl"])
            check(f"bf16 zero 2 with {dtype} gradients runs", rc == 0, err.strip()[-1500:] if rc else "")
            if rc:
                finish()
                return
            if dtype == "bf16":
                ok = "gradients at rest in bf16" in err
                check("the start-up line names the bf16 gradients", ok, "" if ok else err.strip()[-600:])
            got[dtype] = read_metrics(f"{d}/{dtype}.jsonl")
        f, h = got["fp32"], got["bf16"]
        fl, hl = [x["loss"] for x in f], [x["loss"] for x in h]
        print(f"losses fp32 {fl} bf16 {hl}")
        check("the first loss is equal (before any update)", fl[0] == hl[0], f"{fl[0]} vs {hl[0]}")
        check("bf16 gradients change the later losses (the storage rounds)", fl[1:] != hl[1:])
        fg, hg = f[-1]["memory"]["gradients"], h[-1]["memory"]["gradients"]
        print(f"gradients peak fp32 {fg} bf16 {hg} (difference {fg - hg}, 2 x shard {2 * TINY_ALLOCATED})")
        check("the gradients peak falls by exactly 2 bytes a shard element", fg - hg == 2 * TINY_ALLOCATED, f"{fg} - {hg}")
    finish()


if __name__ == "__main__":
    main()
