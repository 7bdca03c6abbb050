"""--stochastic-rounding (issue 13): under --precision bf16 the fp32 master weights are rounded into
the bf16 copy the matmuls read stochastically, with the random bits keyed by (seed, step,
parameter name, logical element index), so every layout rounds every logical weight alike.
On GPT-2's tiny (8 layers), 3 steps:

1. Stochastic rounding changes the run (the copy is not nearest-even's) and still tracks fp32
   within precision_test.py's bf16 bounds (loss k sqrt(S) 2^-8, grad norm k sqrt(2S) 2^-8
   relative at step k, S = 2L + 1 products in series): rounding up or down at random is at most
   one bf16 unit (2^-7 relative) per weight, unbiased, against nearest even's half unit.
2. Layouts. Step 1 rounds the same initial weights with the same bits in every layout, so at
   dp and pp there the layouts only reorder fp32 sums: the fp32 bounds of equivalence.py, where
   the CPU's sgemm gives a row the same bits at any row count (eq.sgemm_rows_invariant; where it
   does not, AVX2's kernels, dp and pp take tp's widened bounds from step 1, for tp's reason). Under
   tp the activations themselves carry fp32 noise from the reordered sums and a matmul operand
   near a bf16 boundary flips already at step 1 (nearest even too: tp2 deviates 4e-6 in grad
   norm at step 1 with or without stochastic rounding), so tp takes the widened bounds from step
   1. Later steps round fp32 masters that differ by that fp32 noise; one near its
   (random) rounding threshold may go the other way, as under nearest even: the bounds scaled by
   2^-8 / 2^-24, as precision_test.py's dp2 row. Checked at dp2 (ZeRO 0, 1, 2, 3: ZeRO-3 rounds
   each gathered group, the others the whole flat copy), tp2 and pp2. Where the fp32 path is
   bitwise -- ZeRO 1 against 0 and ZeRO 3 against 2 at dp2 (the same sums, the optimizer split
   elementwise) -- the bf16 runs must be bitwise too.
3. Resume: --stop-after 2 then --resume is bitwise the uninterrupted run at step 3 (the key
   is the restored update count and the run's seed).
4. Bad input: --stochastic-rounding with --precision fp32 or fp16 is one clear error.

Keying a tp-sharded weight's bits by its local index instead of its logical one is caught
by unit.nn_bf16_weights_test (ShardedCopyHoldsTheLogicalBits), exactly; here its effect hides
inside tp's widened bounds."""
import math
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import check, finish, mpirun, read_metrics, run, synthetic_tokens, trident, write_shard  # noqa: E402
import equivalence as eq  # noqa: E402

STEPS = 3
BATCH, SEQ, VOCAB = 8, 32, 1000
LR = 3e-3
LAYERS = 8
BF16_SCALE = 2.0 ** -8 / 2.0 ** -24


def rel(a, b):
    return abs(a - b) / abs(b)


def main():
    T = trident(sys.argv[1])
    rows_invariant = eq.sgemm_rows_invariant(sys.argv[1])
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(20000, VOCAB, 11))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(3000, VOCAB, 12))
        common = ["train", "--model", "tiny", "--data", f"{d}/syn", "--batch-size", str(BATCH), "--seq-len", str(SEQ),
                  "--steps", str(STEPS), "--lr", str(LR), "--lr-schedule", "constant", "--eps", str(eq.EPS),
                  "--eval-every", "0", "--seed", "5", "--log-every", "100"]
        for prec in ["fp32", "fp16"]:
            rc, _, err = run([T] + common + ["--precision", prec, "--stochastic-rounding"])
            check(f"--stochastic-rounding with --precision {prec} is one clear error",
                  rc != 0 and "needs --precision bf16" in err and "Traceback" not in err
                  and len(err.strip().splitlines()) <= 3, err.strip()[-500:])
        sr = ["--precision", "bf16", "--stochastic-rounding"]
        runs = {
            "fp32": [T] + common + ["--precision", "fp32"],
            "rne": [T] + common + ["--precision", "bf16"],
            "sr": [T] + common + sr,
            "sr_stop": [T] + common + sr + ["--stop-after", "2", "--ckpt-dir", f"{d}/stop"],
            "sr_resume": [T] + common + sr + ["--resume", f"{d}/stop", "--ckpt-dir", f"{d}/resumed"],
        }
        for z in range(4):
            runs[f"dp2_zero{z}"] = [mpirun(), "-n", "2", T] + common + sr + ["--dp", "2", "--zero", str(z)]
        runs["tp2"] = [mpirun(), "-n", "2", T] + common + sr + ["--tp", "2"]
        runs["pp2"] = [mpirun(), "-n", "2", T] + common + sr + ["--pp", "2", "--micro-batches", "2"]
        got = {}
        for name, cmd in runs.items():
            rc, _, err = run(cmd + ["--metrics", f"{d}/{name}.jsonl"], env={"TRIDENT_COMM_TIMEOUT": "120"})
            check(f"{name} runs", rc == 0, f"rc={rc}: {err.strip()[-1500:]}" if rc else "")
            if rc:
                finish()
                return
            m = read_metrics(f"{d}/{name}.jsonl")
            got[name] = ([x["loss"] for x in m], [x["grad_norm"] for x in m], [x["step"] for x in m])

        f_loss, f_norm, _ = got["fp32"]
        s_loss, s_norm, _ = got["sr"]
        r_loss, r_norm, _ = got["rne"]
        check("stochastic rounding changes the bf16 run", s_norm != r_norm or s_loss != r_loss)
        series = 2 * LAYERS + 1
        for k in range(1, STEPS + 1):
            lb, nb = k * math.sqrt(series) * 2.0 ** -8, k * math.sqrt(2 * series) * 2.0 ** -8
            ld, nd = rel(s_loss[k - 1], f_loss[k - 1]), rel(s_norm[k - 1], f_norm[k - 1])
            print(f"sr vs fp32 step {k}: loss {ld:.1e} (bound {lb:.1e}), grad norm {nd:.1e} (bound {nb:.1e}); "
                  f"nearest even: {rel(r_loss[k - 1], f_loss[k - 1]):.1e}, {rel(r_norm[k - 1], f_norm[k - 1]):.1e}")
            check(f"stochastic rounding tracks fp32 at step {k}", ld <= lb and nd <= nb)

        for name in ["dp2_zero0", "dp2_zero1", "dp2_zero2", "dp2_zero3", "tp2", "pp2"]:
            p_loss, p_norm, _ = got[name]
            for k in range(1, STEPS + 1):
                scale = 1.0 if k == 1 and name != "tp2" and rows_invariant else BF16_SCALE
                lb = scale * eq.loss_bound(k, BATCH, SEQ, VOCAB)
                nb = scale * eq.grad_norm_bound(k, BATCH, SEQ)
                ld, nd = rel(p_loss[k - 1], s_loss[k - 1]), rel(p_norm[k - 1], s_norm[k - 1])
                print(f"{name} vs single step {k}: loss {ld:.1e} (bound {lb:.1e}), grad norm {nd:.1e} (bound {nb:.1e})")
                check(f"{name} equals single process at step {k}", ld <= lb and nd <= nb)
        for a, b in [("dp2_zero1", "dp2_zero0"), ("dp2_zero3", "dp2_zero2")]:
            check(f"{a} bitwise {b}", got[a][:2] == got[b][:2], f"{got[a][:2]} vs {got[b][:2]}")

        q_loss, q_norm, q_steps = got["sr_resume"]
        check("resume continues at step 3", q_steps == [3], str(q_steps))
        check("resume bitwise the uninterrupted run", q_loss == s_loss[2:] and q_norm == s_norm[2:],
              f"{q_loss} {q_norm} vs {s_loss[2:]} {s_norm[2:]}")
    finish()


if __name__ == "__main__":
    main()
