"""Documented parallel features the layout matrix does not cover, each on 4 ranks against the
single-process run within the matrix's derived bounds (tests/cli/equivalence.py): losses and
grad norms per step and final weights.
- --sequence-parallel with --pp (tp 2 x pp 2);
- ZeRO-2 with tp (dp 2 x tp 2) and with pp (dp 2 x pp 2);
- --balance-stages trains the same model as the even split AND splits differently (the start-up
  log's partition lines: [0, 5) + [5, 8) instead of [0, 4) + [4, 8) for tiny at seq 32);
- the interleaved schedule actually ran: the start-up description, 2 chunks per rank, the
  closing bubble line's interleaved formula, and the executor's measured timeline, where every
  micro-batch's forward appears twice on rank 0 (once per chunk);
- --init-from into another layout is not ignored: the first loss of tp 2 x pp 2 from a
  checkpoint equals the single-process run from it, and differs from a fresh start."""
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import check, finish, mpirun, read_metrics, run, synthetic_tokens, trident, write_shard  # noqa: E402
import equivalence as eq  # noqa: E402
import safetensors_stdlib as st  # noqa: E402

STEPS, B, SEQ, VOCAB, LR = 4, 8, 32, 1000, 3e-3


def main():
    build = sys.argv[1]
    T = trident(build)
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(20000, VOCAB, 21))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(3000, VOCAB, 22))
        common = ["train", "--model", "tiny", "--data", f"{d}/syn", "--batch-size", str(B), "--seq-len", str(SEQ),
                  "--steps", str(STEPS), "--lr", str(LR), "--lr-schedule", "constant", "--eps", str(eq.EPS),
                  "--eval-every", "0", "--seed", "9", "--log-every", "100"]

        def train(tag, flags, ranks=4, extra=()):
            cmd = ([mpirun(), "-n", str(ranks)] if ranks > 1 else []) + [T] + common + list(flags) + list(extra)
            rc, _, err = run(cmd + ["--ckpt-dir", f"{d}/{tag}", "--metrics", f"{d}/{tag}.jsonl"],
                             env={"TRIDENT_COMM_TIMEOUT": "120"})
            check(f"{tag} runs", rc == 0, err[-1200:] if rc else "")
            return (read_metrics(f"{d}/{tag}.jsonl"), err) if rc == 0 else (None, err)

        ref, _ = train("single", [], ranks=1)
        if ref is None:
            return
        ref_w = st.load(f"{d}/single/step_{STEPS:08d}/model.safetensors")
        n_params = sum(len(v) for v in ref_w.values())
        w_bound = eq.weight_bound([m["grad_norm"] for m in ref], n_params, LR, B, SEQ)

        def same_model(tag, got):
            bad_loss, bad_norm = eq.deviations(got, ref, B, SEQ, VOCAB)
            w_dev, where = st.max_abs_diff(st.load(f"{d}/{tag}/step_{STEPS:08d}/model.safetensors"), ref_w)
            check(f"{tag}: {STEPS} steps, losses and grad norms within the bounds",
                  len(got) == STEPS and not bad_loss and not bad_norm,
                  f"loss steps {bad_loss}, norm steps {bad_norm}: {[m['loss'] for m in got]} vs "
                  f"{[m['loss'] for m in ref]}")
            check(f"{tag}: weights within {w_bound:.2e}", w_dev <= w_bound, f"{w_dev:.2e} at {where}")

        for tag, flags in [("tp2_pp2_sp", ["--tp", "2", "--pp", "2", "--sequence-parallel", "--micro-batches", "2"]),
                           ("dp2_tp2_zero2", ["--dp", "2", "--tp", "2", "--zero", "2", "--micro-batches", "2"]),
                           ("dp2_pp2_zero2", ["--dp", "2", "--pp", "2", "--zero", "2", "--micro-batches", "2"])]:
            got, err = train(tag, flags)
            if got:
                same_model(tag, got)
                if "sp" in tag:
                    check(f"{tag}: the start-up log says sequence parallel", ", sequence parallel" in err)
                if "zero2" in tag:
                    check(f"{tag}: the start-up log says zero 2", "zero 2;" in err)

        # --balance-stages: same model, another split than the even one.
        even, even_log = train("dp2_pp2_even", ["--dp", "2", "--pp", "2", "--micro-batches", "2"])
        bal, bal_log = train("dp2_pp2_balanced", ["--dp", "2", "--pp", "2", "--micro-batches", "2",
                                                  "--balance-stages"])
        if even and bal:
            same_model("dp2_pp2_balanced", bal)
            split = re.compile(r"pp rank (\d): chunk \d = (?:embedding \+ )?layers \[(\d+), (\d+)\)")
            check("the even split is [0, 4) + [4, 8)", split.findall(even_log) == [("0", "0", "4"), ("1", "4", "8")],
                  str(split.findall(even_log)))
            check("--balance-stages gives the head's stage fewer layers: [0, 5) + [5, 8)",
                  split.findall(bal_log) == [("0", "0", "5"), ("1", "5", "8")], str(split.findall(bal_log)))

        # The interleaved schedule ran (not just was asked for).
        inter, log = train("dp2_pp2_interleaved", ["--dp", "2", "--pp", "2", "--micro-batches", "2",
                                                   "--schedule", "interleaved", "--virtual-stages", "2"])
        if inter:
            same_model("dp2_pp2_interleaved", inter)
            ok = ("schedule interleaved pp=2 M=2 V=2" in log and "8 layers over pp 2 x 2 chunk(s) per rank" in log and
                  "pp rank 0: chunk 0 = embedding + layers [0, 2); chunk 2 = layers [4, 6)" in log)
            check("interleaved: the start-up description", ok, "" if ok else log[-1500:])
            check("interleaved: the closing bubble line uses (p-1)/(V*m+p-1) = 20.0%",
                  "interleaved pp=2 M=2 V=2 schedule's bubble is 20.0%" in log)
            row = re.search(r"^rank  0 \|([^|]*)\|", log, re.M)
            runs = len(re.findall(r"0+", row.group(1))) if row else 0
            check("interleaved: rank 0's measured timeline holds micro-batch 0's forward twice (two chunks)",
                  runs == 2, row.group(0) if row else log[-800:])

        # --init-from into another layout: the checkpoint is loaded, not ignored.
        ckpt = f"{d}/single/step_{STEPS:08d}"
        fresh = ref[0]["loss"]
        one, _ = train("single_init", ["--init-from", ckpt], ranks=1)
        lay, log = train("tp2_pp2_init", ["--tp", "2", "--pp", "2", "--micro-batches", "2", "--init-from", ckpt])
        if one and lay:
            ok = f"initialised from {ckpt}" in log
            check("tp2_pp2 --init-from logs the checkpoint", ok, "" if ok else log[-400:])
            check("the first loss from the checkpoint differs from a fresh start (it was loaded)",
                  abs(one[0]["loss"] - fresh) > 1e-3 * fresh and abs(lay[0]["loss"] - fresh) > 1e-3 * fresh,
                  f"{one[0]['loss']} / {lay[0]['loss']} vs fresh {fresh}")
            bad_loss, bad_norm = eq.deviations(lay, one, B, SEQ, VOCAB)
            check("tp2_pp2 from the checkpoint trains as the single process from it (losses, grad norms)",
                  not bad_loss and not bad_norm, f"{[m['loss'] for m in lay]} vs {[m['loss'] for m in one]}")


if __name__ == "__main__":
    main()
    finish()
