"""The layout-equivalence matrix (issue 8): for world size 8 and the tiny preset, every
dp x tp x pp layout with product 8, crossed with ZeRO 0 and 3 and the pipeline schedules,
trains 5 steps whose losses and final weights equal the single-process run's within fp32
tolerance. Each row prints its max deviation.

Tolerances: layouts change only the order of floating-point sums (dp sums per-rank gradient
shares, tp sums partial products, micro-batches split the batch), each ~1e-7 relative per
operation; over a 8-layer model and 5 steps the loss agrees to ~1e-6 relative, so 2e-5 is the
bound. Adam turns each gradient into a step of about lr whatever its size, so an element
whose gradient is near zero can move by up to ~lr per step differently; weights are compared
against that budget: max |dw| < 1% of sum(lr)."""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import check, finish, mpirun, read_metrics, run, synthetic_tokens, trident, write_shard  # noqa: E402
import safetensors_stdlib as st  # noqa: E402

STEPS = 5


def layouts():
    rows = []
    for dp, tp, pp in [(8, 1, 1), (4, 2, 1), (2, 4, 1), (4, 1, 2), (2, 2, 2), (1, 4, 2), (2, 1, 4),
                       (1, 2, 4), (1, 1, 8)]:
        zeros = [0, 3] if dp > 1 else [0]
        schedules = ["1f1b"] if pp == 1 else ["gpipe", "1f1b"] + (["interleaved"] if 2 * pp <= 8 else [])
        for z in zeros:
            for s in schedules:
                rows.append((dp, tp, pp, z, s))
    return rows


def main():
    build = sys.argv[1]
    T = trident(build)
    only = os.environ.get("TRIDENT_MATRIX_ONLY")  # e.g. "2,2,2" to run one layout while debugging
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(30000, 1000, 11))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(3000, 1000, 12))
        lr = 3e-3
        common = ["train", "--model", "tiny", "--data", f"{d}/syn", "--batch-size", "16", "--seq-len", "32",
                  "--steps", str(STEPS), "--lr", str(lr), "--lr-schedule", "constant", "--eval-every", "0",
                  "--seed", "5", "--log-every", "100"]
        rc, _, err = run([T] + common + ["--ckpt-dir", f"{d}/ref", "--metrics", f"{d}/ref.jsonl"])
        check("single-process reference run", rc == 0, err[-1500:] if rc else "")
        if rc:
            return
        ref_loss = [m["loss"] for m in read_metrics(f"{d}/ref.jsonl")]
        ref_w = st.load(f"{d}/ref/step_{STEPS:08d}/model.safetensors")
        budget = STEPS * lr
        print(f"reference losses {ref_loss}")
        print(f"{'dp':>3} {'tp':>3} {'pp':>3} {'zero':>4} {'schedule':>11} {'M':>2} | "
              f"{'max loss rel dev':>16} {'max weight abs dev':>18}")
        for dp, tp, pp, z, s in layouts():
            if only and only != f"{dp},{tp},{pp}":
                continue
            tag = f"dp{dp}_tp{tp}_pp{pp}_z{z}_{s}"
            # Micro-batches: 2 per dp rank without pipelining, 4 with (interleaving needs M % pp == 0).
            m = 2 if pp == 1 else (pp if s == "interleaved" else 4)
            extra = ["--dp", str(dp), "--tp", str(tp), "--pp", str(pp), "--zero", str(z),
                     "--schedule", s, "--micro-batches", str(m)]
            if s == "interleaved":
                extra += ["--virtual-stages", "2"]
            rc, _, err = run([mpirun(), "-n", "8", T] + common + extra +
                             ["--ckpt-dir", f"{d}/{tag}", "--metrics", f"{d}/{tag}.jsonl"],
                             env={"TRIDENT_COMM_TIMEOUT": "120"})
            if rc != 0:
                check(f"layout {tag} runs", False, err.strip()[-1500:])
                continue
            loss = [x["loss"] for x in read_metrics(f"{d}/{tag}.jsonl")]
            loss_dev = max(abs(a - b) / abs(b) for a, b in zip(loss, ref_loss))
            w_dev, where = st.max_abs_diff(st.load(f"{d}/{tag}/step_{STEPS:08d}/model.safetensors"), ref_w)
            print(f"{dp:>3} {tp:>3} {pp:>3} {z:>4} {s:>11} {m:>2} | {loss_dev:>16.2e} {w_dev:>18.2e}  ({where})",
                  flush=True)
            check(f"layout {tag} losses", len(loss) == STEPS and loss_dev < 2e-5, f"{loss} vs {ref_loss}")
            check(f"layout {tag} weights", w_dev < 0.01 * budget, f"{w_dev:.2e} at {where}")


if __name__ == "__main__":
    main()
    finish()
