"""--grad-dtype fp32|bf16|fp16 end to end (issue 13): ZeRO-2/3's gradient shard stored in 16 bits
(parallel/grad_shard.h). The engine-level bitwise and bounded comparisons are
tests/mpi/dp_grad16_test.cpp; here, through the CLI:

1. Bad input, each one clear error: an unknown dtype (naming fp32, bf16, fp16); a 16-bit dtype that
   does not match --precision (naming both flags); 16-bit gradients at --zero 1 under --pp 2
   (naming --zero 2 or 3).
2. tiny, one process, --precision bf16 at --zero 2 and --zero 0, 2 micro-batches, fp32 vs bf16
   gradients: the start-up line says "gradients at rest in bf16", the first loss is equal (before
   any update), the runs differ later (the storage rounds), and the metrics' gradients peak falls by
   exactly what docs/memory.md says: at ZeRO 2 by 2 bytes a shard element (at one rank the shard is
   all 136,512 allocated elements of tiny; the fp32 buckets are alike in both runs), at ZeRO 0 by
   2 bytes an element less 4 bytes an element of the largest layer group's fp32 working buffer (the
   embeddings, 34,816 elements)."""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import check, finish, mpirun, read_metrics, run, synthetic_tokens, trident, write_shard  # noqa: E402

STEPS = 3
BATCH, SEQ, VOCAB = 8, 32, 1000
TINY_ALLOCATED = 1024 * 32 + 64 * 32 + 8 * (12 * 32 * 32 + 13 * 32) + 2 * 32
TINY_LARGEST_GROUP = 1024 * 32 + 64 * 32  # the embeddings (wte + wpe): ZeRO 0-1's largest working buffer


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
        rc, _, err = run([mpirun(), "-n", "2"] + common + ["--grad-dtype", "bf16", "--precision", "bf16", "--zero", "1",
                                                         "--pp", "2"], env={"TRIDENT_COMM_TIMEOUT": "60"})
        ok = rc != 0 and "--grad-dtype bf16 at --zero 1 with --pp 2" in err and "--zero 2 or 3" in err
        check("16-bit gradients at ZeRO 1 under a pipeline: a clear error naming the way out", ok, err.strip()[-800:])

        for zero in ["0", "2"]:
            if not compare(common, zero, d):
                break
    finish()


def compare(common, zero, d):
    """fp32 vs bf16 gradients at --zero `zero`, one process, 2 micro-batches; False if a run failed."""
    got = {}
    for dtype in ["fp32", "bf16"]:
        rc, _, err = run(common + ["--precision", "bf16", "--zero", zero, "--micro-batches", "2", "--grad-dtype", dtype,
                                   "--metrics", f"{d}/{zero}_{dtype}.jsonl"])
        check(f"bf16 zero {zero} with {dtype} gradients runs", rc == 0, err.strip()[-1500:] if rc else "")
        if rc:
            return False
        if dtype == "bf16":
            ok = "gradients at rest in bf16" in err
            check(f"zero {zero}: the start-up line names the bf16 gradients", ok, "" if ok else err.strip()[-600:])
        got[dtype] = read_metrics(f"{d}/{zero}_{dtype}.jsonl")
    f, h = got["fp32"], got["bf16"]
    fl, hl = [x["loss"] for x in f], [x["loss"] for x in h]
    print(f"zero {zero}: losses fp32 {fl} bf16 {hl}")
    check(f"zero {zero}: the first loss is equal (before any update)", fl[0] == hl[0], f"{fl[0]} vs {hl[0]}")
    check(f"zero {zero}: bf16 gradients change the later losses (the storage rounds)", fl[1:] != hl[1:])
    fg, hg = f[-1]["memory"]["gradients"], h[-1]["memory"]["gradients"]
    # ZeRO 2: the shard (all of it at one rank) from 4 to 2 bytes, the fp32 buckets alike in both;
    # ZeRO 0: the flat buffer from 4 to 2 bytes, plus the largest group's fp32 working buffer.
    want = 2 * TINY_ALLOCATED if zero == "2" else 2 * TINY_ALLOCATED - 4 * TINY_LARGEST_GROUP
    print(f"zero {zero}: gradients peak fp32 {fg} bf16 {hg} (difference {fg - hg}, expected {want})")
    check(f"zero {zero}: the gradients peak falls by exactly the bytes derived", fg - hg == want, f"{fg} - {hg}")
    return True


if __name__ == "__main__":
    main()
