"""Aux-loss-free balancing and the capacity factor of the mixture of experts (nn/moe_router.h),
end to end on mixtral-tiny:
- the router bias is saved as model.layers.N.block_sparse_moe.gate.e_score_correction_bias, F32
  [E], config.json records router_bias_update_rate and expert_capacity_factor, `ckpt info`
  verifies it; with a rate of 0.01 the bias after 4 steps is a sum of +-0.01 steps (nonzero);
- the metrics carry dropped_fraction (in (0, 1) at capacity factor 0.5);
- resume: 2 steps, stop, resume for 2 more give bitwise the uninterrupted run's losses, aux
  losses, expert loads, dropped fractions and final model.safetensors (bias included);
- a checkpoint written without the bias resumes with a rate > 0 (the bias starts at zero);
- bad input: a negative rate or factor, either flag on a dense model, and a biased checkpoint
  continued with --moe-bias-update-rate 0 are one clear error each.
The layouts (dp, ep, tp, pp with micro-batches against one process, the bias and the drops
equal) are cli.layout_matrix_test.mixtral-tiny-balanced."""
import json
import os
import struct
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import check, finish, read_metrics, run, synthetic_tokens, trident, write_shard  # noqa: E402
import safetensors_stdlib as st  # noqa: E402

BIAS = "model.layers.{}.block_sparse_moe.gate.e_score_correction_bias"


def header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def main():
    build = sys.argv[1]
    T = trident(build)
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(20000, 1000, 1))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(4000, 1000, 2))
        base = [T, "train", "--model", "mixtral-tiny", "--data", f"{d}/syn", "--batch-size", "4", "--seq-len", "32",
                "--steps", "4", "--lr", "3e-3", "--eval-every", "0", "--seed", "7", "--grad-accum", "2"]
        common = base + ["--moe-bias-update-rate", "0.01", "--moe-capacity-factor", "0.5"]
        rc, _, err = run(common + ["--ckpt-dir", f"{d}/a", "--ckpt-every", "2", "--metrics", f"{d}/a.jsonl"])
        check("4 steps with the bias and a capacity", rc == 0, err[-2000:] if rc else "")
        if rc:
            return
        a = read_metrics(f"{d}/a.jsonl")
        fr = [m.get("dropped_fraction") for m in a]
        check("metrics carry dropped_fraction in (0, 1)", all(f is not None and 0 < f < 1 for f in fr), f"{fr}")
        ck = f"{d}/a/step_00000004"
        h = header(f"{ck}/model.safetensors")
        cfg = json.load(open(f"{ck}/config.json"))
        check("config.json records the rate and the factor",
              cfg.get("router_bias_update_rate") == 0.01 and cfg.get("expert_capacity_factor") == 0.5,
              f"{cfg.get('router_bias_update_rate')} {cfg.get('expert_capacity_factor')}")
        layers = cfg["num_hidden_layers"]
        names = [BIAS.format(l) for l in range(layers)]
        check("the bias of every layer is saved F32 [E]",
              all(n in h and h[n]["dtype"] == "F32" and h[n]["shape"] == [cfg["num_local_experts"]] for n in names),
              f"{[h.get(n) for n in names]}")
        w = st.load(f"{ck}/model.safetensors")
        steps = [round(x / 0.01) for n in names for x in w[n]]
        check("the bias after 4 steps is a sum of 4 steps of +-0.01, not all zero",
              all(abs(x) <= 4 for x in steps) and any(x != 0 for x in steps) and
              all(abs(x - round(x / 0.01) * 0.01) < 1e-6 for n in names for x in w[n]),
              f"{[list(w[n]) for n in names]}")
        rc, out, err = run([T, "ckpt", "info", ck])
        check("ckpt info verifies the bias", rc == 0 and "router bias of" in out + err, (out + err)[-600:])

        # Resume: 2 steps, stop, resume 2 more; bitwise the uninterrupted run.
        rc, _, err = run(common + ["--ckpt-dir", f"{d}/b", "--stop-after", "2", "--metrics", f"{d}/b1.jsonl"])
        check("run stopped after 2 steps", rc == 0, err[-2000:] if rc else "")
        rc, _, err = run(common + ["--ckpt-dir", f"{d}/b", "--resume", f"{d}/b", "--metrics", f"{d}/b2.jsonl"])
        check("resumed run", rc == 0, err[-2000:] if rc else "")
        if rc:
            return
        b = read_metrics(f"{d}/b2.jsonl")
        keys = ["loss", "grad_norm", "aux_loss", "expert_load", "dropped_fraction"]
        check("resumed steps 3-4 equal the uninterrupted run's bitwise",
              [[m[k] for k in keys] for m in b] == [[m[k] for k in keys] for m in a[2:]],
              f"{[[m[k] for k in keys] for m in b]} vs {[[m[k] for k in keys] for m in a[2:]]}")
        wb = st.load(f"{d}/b/step_00000004/model.safetensors")
        check("resumed final weights and bias equal bitwise", wb == w,
              f"differ in {[k for k in w if wb.get(k) != w[k]][:4]}")

        # A checkpoint without the bias (rate 0) continued with a rate: the bias starts at zero.
        rc, _, err = run(base + ["--ckpt-dir", f"{d}/c", "--stop-after", "2"])
        check("run without the bias", rc == 0 and BIAS.format(0) not in header(f"{d}/c/step_00000002/model.safetensors"),
              err[-2000:] if rc else "")
        rc, _, err = run(base + ["--ckpt-dir", f"{d}/c", "--resume", f"{d}/c", "--moe-bias-update-rate", "0.01"])
        wc = st.load(f"{d}/c/step_00000004/model.safetensors") if rc == 0 else {}
        check("resumed with a rate: the bias starts at zero (2 steps of +-0.01)",
              rc == 0 and all(abs(x) <= 0.0200001 for n in names for x in wc.get(n, [1.0])),
              err[-2000:] if rc else f"{[list(wc[n]) for n in names if n in wc]}")

        # First-k dense layers with the bias: one bias row per MoE layer, none for the dense layer 0;
        # resumed bitwise (the table is indexed from first_k_dense on, also in the checkpoint).
        kd = common + ["--moe-first-k-dense", "1"]
        rc, _, err = run(kd + ["--ckpt-dir", f"{d}/k", "--metrics", f"{d}/k.jsonl"])
        check("4 steps with --moe-first-k-dense 1 and the bias", rc == 0, err[-2000:] if rc else "")
        if rc == 0:
            hk = header(f"{d}/k/step_00000004/model.safetensors")
            wk = st.load(f"{d}/k/step_00000004/model.safetensors")
            check("the dense layer 0 has no bias, the MoE layers 1.. have one that moved",
                  BIAS.format(0) not in hk and all(BIAS.format(l) in hk for l in range(1, layers))
                  and any(x != 0 for l in range(1, layers) for x in wk[BIAS.format(l)]),
                  f"{sorted(k for k in hk if 'correction' in k)}")
            rc, _, err = run(kd + ["--ckpt-dir", f"{d}/k2", "--stop-after", "2"])
            rc2, _, err2 = run(kd + ["--ckpt-dir", f"{d}/k2", "--resume", f"{d}/k2", "--metrics", f"{d}/k2.jsonl"])
            k1 = read_metrics(f"{d}/k.jsonl")
            k2 = read_metrics(f"{d}/k2.jsonl") if rc == 0 and rc2 == 0 else []
            check("first-k dense with the bias resumes bitwise (metrics and weights)",
                  [[m[k] for k in keys] for m in k2] == [[m[k] for k in keys] for m in k1[2:]] and
                  st.load(f"{d}/k2/step_00000004/model.safetensors") == wk, (err + err2)[-1500:])
            rc, out, err = run([T, "ckpt", "info", f"{d}/k/step_00000004"])
            check("ckpt info verifies the bias of the 3 MoE layers", rc == 0 and f"router bias of {layers - 1} layers"
                  in out + err, (out + err)[-600:])

        # Bad input.
        bad = [
            (["--moe-bias-update-rate", "-0.001"], "moe_bias_update_rate"),
            (["--moe-capacity-factor", "-1"], "moe_capacity_factor"),
        ]
        for flags, want in bad:
            rc, out, err = run(base + flags)
            check(f"refused: {' '.join(flags)}", rc != 0 and want.replace("_", "-") in (out + err).replace("_", "-"),
                  (out + err)[-400:])
        dense = [T, "train", "--model", "llama-tiny", "--data", f"{d}/syn", "--steps", "1", "--eval-every", "0"]
        for flag in ["--moe-bias-update-rate", "--moe-capacity-factor"]:
            rc, out, err = run(dense + [flag, "0.5"])
            check(f"refused on a dense model: {flag}", rc != 0 and "has no experts" in out + err, (out + err)[-400:])
        rc, out, err = run(base + ["--init-from", ck, "--moe-bias-update-rate", "0"])
        check("refused: a biased checkpoint continued with rate 0", rc != 0 and "e_score_correction_bias" in out + err
              and "--moe-bias-update-rate 0" in out + err, (out + err)[-600:])
        for line in (out + err).strip().splitlines()[-1:]:
            print(f"    message: {line[:300]}")


if __name__ == "__main__":
    main()
    finish()
