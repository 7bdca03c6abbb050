"""--precision fp16 with dynamic loss scaling (issue 13): every matmul rounds its operands to
fp16 (11 significant bits; beyond 65504 an operand is inf) and accumulates in fp32; backward runs
on the loss times a power-of-two scale that Megatron-LM's DynamicGradScaler adjusts; a step
whose scaled gradients overflow anywhere is skipped on every rank. For GPT-2's tiny:

1. From Megatron's initial scale 2^32 the first steps overflow (the head's loss gradient,
   scale / tokens, is far beyond fp16's range): each is skipped (metrics `skipped`, `loss_scale`),
   noted on stderr as an overflow, and does not count against --max-bad-steps (more of them in a
   row than that and the run still goes on). The scale follows the state machine exactly
   (hysteresis 2: the first overflow keeps the scale, every later one halves it; after
   --loss-scale-window clean steps it doubles), recomputed here from the skip flags.
2. The LR schedule follows the applied updates, as Megatron advances its scheduler only after a
   successful step: with warm-up, step k's lr is the fp32 run's lr at (k - skipped steps so far).
3. With a scale that never overflows, fp16 tracks fp32: one fp16 rounding is a relative error
   <= 2^-11, so as for bf16 (precision_test.py) loss and grad norm stay within
   k * sqrt(S) * 2^-11 and k * sqrt(2S) * 2^-11 of fp32 at step k (S = 2L + 1 matmuls in series),
   and must differ from it (the operands were rounded).
4. dp2 equals one process: the same skipped steps and scales, and losses and grad norms within
   the layout matrix's bounds scaled by 2^-11 / 2^-24 from the first applied step on. Unlike
   bf16's first step (precision_test.py) the scaling is needed at once: the two layouts' values
   differ by fp32 reordering (sgemm blocks rows differently for 128 rows than for 256, and dp
   sums weight gradients in halves), and a value near an fp16 rounding boundary then rounds the
   other way when it becomes the next product's operand, a change of one fp16 unit roundoff
   (measured: grad norm 1.2e-6 at the first applied step against the unscaled bound 9.5e-7).
5. A checkpoint carries the scaler: a run stopped after the overflows and resumed is bitwise the
   uninterrupted run, loss scales included; a damaged "loss_scaler" in trident.json is one clear
   error naming the file and field.
6. At the minimum scale there is nothing to back off: overflows there are poisoned steps, and
   --max-bad-steps of them in a row stop the run with the usual error.
7. Bad values: --initial-loss-scale 0, --loss-scale-window 0: one clear error each.

Mutations tried by hand (each failed a check here):
- the engine not unscaling the gradients for AdamW (grad factor = clip only): "fp16 unscales the
  gradients before AdamW" (the eps-1e-6 runs do not see it: AdamW is scale-invariant but for eps);
- the loss-scaler state not restored on resume: "resume bitwise" (the resumed run overflows again);
- overflow steps counted as poisoned: the 2^32 run stops after 5 skipped steps."""
import json
import math
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import check, finish, mpirun, read_metrics, run, synthetic_tokens, trident, write_shard  # noqa: E402
import equivalence as eq  # noqa: E402

BATCH, SEQ, VOCAB = 8, 32, 1000
LR, EPS, WARMUP = 3e-3, eq.EPS, 6
LAYERS = 8  # tiny's n_layer
U16 = 2.0 ** -11
STEPS = 24


def scales_from_skips(skipped, initial=2.0 ** 32, window=1000, hysteresis=2, min_scale=1.0):
    """Megatron's DynamicGradScaler, replayed: the scale each step ran with."""
    scale, growth, hyst, out = initial, 0, hysteresis, []
    for s in skipped:
        out.append(scale)
        if s:
            growth, hyst = 0, hyst - 1
            if hyst <= 0:
                scale = max(scale * 0.5, min_scale)
        else:
            growth += 1
            if growth == window:
                growth, hyst, scale = 0, hysteresis, scale * 2.0
    return out


def rel(a, b):
    return abs(a - b) / abs(b)


def main():
    T = trident(sys.argv[1])
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(40000, VOCAB, 11))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(3000, VOCAB, 12))
        common = ["train", "--model", "tiny", "--data", f"{d}/syn", "--batch-size", str(BATCH), "--seq-len",
                  str(SEQ), "--lr", str(LR), "--warmup-steps", str(WARMUP), "--eps", str(EPS), "--eval-every", "0",
                  "--seed", "5", "--log-every", "100"]

        def train(tag, extra, steps=STEPS, launcher=()):
            rc, _, err = run(list(launcher) + [T] + common + ["--steps", str(steps), "--metrics", f"{d}/{tag}.jsonl"] + extra,
                             env={"TRIDENT_COMM_TIMEOUT": "120"})
            check(f"{tag} runs", rc == 0, f"rc={rc}: {err.strip()[-1500:]}" if rc else "")
            return (read_metrics(f"{d}/{tag}.jsonl") if rc == 0 else None), err

        fp32, _ = train("fp32", ["--precision", "fp32"])
        big, big_err = train("fp16_2p32", ["--precision", "fp16", "--ckpt-dir", f"{d}/ck_big"])
        if fp32 is None or big is None:
            return finish()
        skipped = [m["skipped"] for m in big]
        n_skip = skipped.index(False) if False in skipped else len(skipped)  # the leading overflows
        check("fp16 from 2^32: more overflow steps in a row than --max-bad-steps (5), and the run went on",
              n_skip > 5 and len(big) == STEPS and skipped.count(False) >= STEPS // 2, str(skipped))
        # (A later overflow, as the gradients grow against a scale that has crept up, is normal.)
        check("fp16: every skipped step is noted as an overflow, none as poisoned",
              big_err.count("fp16 gradients overflowed") == sum(skipped) and "not finite on some rank" not in big_err,
              big_err.strip()[-800:])
        want = scales_from_skips(skipped)
        check("fp16: the loss scale follows Megatron's state machine", [m["loss_scale"] for m in big] == want,
              f"{[m['loss_scale'] for m in big][:n_skip + 2]} vs {want[:n_skip + 2]}")
        check("fp16: overflow steps still report a finite loss", all(math.isfinite(m["loss"]) for m in big))
        summary = f"({sum(skipped)} step(s) skipped: {sum(skipped)} fp16 overflow(s), 0 non-finite)"
        check("fp16: the closing line counts the skipped steps", summary in big_err and "final loss nan" not in big_err,
              big_err.strip()[-300:])
        lr32 = [m["lr"] for m in fp32]
        got_lr = [m["lr"] for m in big]
        applied = 0
        want_lr = []
        for s in skipped:
            want_lr.append(lr32[applied])
            applied += 0 if s else 1
        check("fp16: the LR schedule follows applied updates (a skipped step repeats its lr)", got_lr == want_lr,
              f"{got_lr[:n_skip + 3]} vs {want_lr[:n_skip + 3]}")

        # 3. A scale that never overflows: fp16 tracks fp32.
        low_scale = 2.0 ** 10
        low, _ = train("fp16_low", ["--precision", "fp16", "--initial-loss-scale", str(low_scale)], steps=3)
        if low is None:
            return finish()
        check("fp16 at scale 2^10: no step skipped", not any(m["skipped"] for m in low))
        series = 2 * LAYERS + 1
        for k in range(1, 4):
            lb, nb = k * math.sqrt(series) * U16, k * math.sqrt(2 * series) * U16
            ld, nd = rel(low[k - 1]["loss"], fp32[k - 1]["loss"]), rel(low[k - 1]["grad_norm"], fp32[k - 1]["grad_norm"])
            print(f"fp16 vs fp32 step {k}: loss {ld:.1e} (bound {lb:.1e}), grad norm {nd:.1e} (bound {nb:.1e})")
            check(f"fp16 tracks fp32 at step {k}", ld <= lb and nd <= nb)
        check("fp16 differs from fp32 (operands were rounded)",
              [m["loss"] for m in low] != [m["loss"] for m in fp32[:3]]
              or [m["grad_norm"] for m in low] != [m["grad_norm"] for m in fp32[:3]])

        # AdamW is invariant to a gradient scale but for eps, so a gradient left scaled would hide
        # behind it; with eps 1, far above the gradients, the update is ~ lr g / eps and it cannot
        # (lr 0.3 so that the update moves the loss).
        big_eps = ["--eps", "1.0", "--lr", "0.3", "--lr-schedule", "constant", "--warmup-steps", "0"]
        f_eps, _ = train("fp32_eps", ["--precision", "fp32"] + big_eps, steps=3)
        l_eps, _ = train("fp16_eps", ["--precision", "fp16", "--initial-loss-scale", str(low_scale)] + big_eps, steps=3)
        if f_eps is None or l_eps is None:
            return finish()
        for k in range(2, 4):
            lb = k * math.sqrt(series) * U16
            ld = rel(l_eps[k - 1]["loss"], f_eps[k - 1]["loss"])
            print(f"fp16 vs fp32 with eps 1, step {k}: loss {ld:.1e} (bound {lb:.1e})")
            check(f"fp16 unscales the gradients before AdamW (eps 1, step {k})", ld <= lb)

        # 4. dp2 equals one process, overflow pattern included.
        dp2, _ = train("fp16_dp2", ["--precision", "fp16", "--dp", "2"], steps=n_skip + 3, launcher=(mpirun(), "-n", "2"))
        if dp2 is None:
            return finish()
        check("fp16 dp2: the same skipped steps and loss scales as one process",
              [m["skipped"] for m in dp2] == skipped[:n_skip + 3]
              and [m["loss_scale"] for m in dp2] == want[:n_skip + 3])
        for k in range(1, 4):
            i = n_skip + k - 1
            scale = U16 / 2.0 ** -24
            lb, nb = scale * eq.loss_bound(k, BATCH, SEQ, VOCAB), scale * eq.grad_norm_bound(k, BATCH, SEQ)
            ld, nd = rel(dp2[i]["loss"], big[i]["loss"]), rel(dp2[i]["grad_norm"], big[i]["grad_norm"])
            print(f"fp16 dp2 vs single, applied step {k}: loss {ld:.1e} (bound {lb:.1e}), grad norm {nd:.1e} (bound {nb:.1e})")
            check(f"fp16 dp2 equals one process at applied step {k}", ld <= lb and nd <= nb)

        # 5. Resume after the overflows: bitwise, scales included.
        stop = n_skip + 2
        _, _ = train("fp16_stop", ["--precision", "fp16", "--stop-after", str(stop), "--ckpt-dir", f"{d}/ck_stop"])
        res, res_err = train("fp16_resume", ["--precision", "fp16", "--resume", f"{d}/ck_stop", "--ckpt-dir", f"{d}/ck_res"])
        if res is not None:
            check("fp16 resume continues after the stop", [m["step"] for m in res] == list(range(stop + 1, STEPS + 1)))
            check("fp16 resume restores the loss scale", "loss scale" in res_err and "restored" in res_err, res_err[-600:])
            check("fp16 resume is bitwise the uninterrupted run (losses, grad norms, loss scales)",
                  [(m["loss"], m["grad_norm"], m["loss_scale"], m["lr"]) for m in res]
                  == [(m["loss"], m["grad_norm"], m["loss_scale"], m["lr"]) for m in big[stop:]])
        step_dir = os.path.join(f"{d}/ck_stop", f"step_{stop:08d}")
        tj = json.load(open(os.path.join(step_dir, "trident.json")))
        check("the checkpoint's trident.json holds the scaler", "loss_scaler" in tj and tj["loss_scaler"]["scale"] == want[stop])
        tj["loss_scaler"]["scale"] = "big"
        json.dump(tj, open(os.path.join(step_dir, "trident.json"), "w"))
        rc, _, err = run([T] + common + ["--steps", str(STEPS), "--precision", "fp16", "--resume", step_dir])
        check("a damaged loss_scaler in trident.json is one clear error naming the file and field",
              rc != 0 and "trident.json" in err and "loss_scaler" in err and "scale" in err and "Traceback" not in err
              and len(err.strip().splitlines()) <= 4, err.strip()[-600:])

        # 6. Overflow at the minimum scale is poisoned.
        rc, _, err = run([T] + common + ["--steps", "10", "--precision", "fp16", "--min-loss-scale", str(2.0 ** 32)])
        check("fp16 overflow at the minimum scale is a poisoned step: the run stops after --max-bad-steps",
              rc != 0 and "non-finite steps in a row" in err, err.strip()[-600:])

        # 7. Bad values.
        for flag, value in [("--initial-loss-scale", "0"), ("--loss-scale-window", "0")]:
            rc, _, err = run([T] + common + ["--steps", "1", "--precision", "fp16", flag, value])
            check(f"{flag} {value} is one clear error", rc != 0 and flag.lstrip("-").replace("-", "_") in err.replace("-", "_")
                  and "Traceback" not in err and len(err.strip().splitlines()) <= 3, err.strip()[-400:])
    finish()


if __name__ == "__main__":
    main()
