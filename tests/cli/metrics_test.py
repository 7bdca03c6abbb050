"""The per-step metrics line (README 'Output'): clip_scale is below 1 exactly when grad_norm
exceeds --grad-clip, and then grad_clip / (grad_norm + 1e-6) (PyTorch's clip_grad_norm_), 1
otherwise; tokens and tokens_per_s follow from B*T and
step_ms; mfu = tokens_per_s * (6N + 12 L C T) / peak with one peak (the start-up sgemm probe)
for the whole run, N the parameters without the position table; memory holds every category,
parameters/gradients/optimizer_state at exactly 4/4/8 bytes per allocated element; val_loss
appears on evaluation steps; under --pp also pipeline_idle. Mixture of experts: aux_loss and
expert_load (per layer the fewest / most tokens an expert got, bracketing k x tokens / E), routing_hash
(one hex value per MoE layer), and
--moe-aux-loss-coef X trains exactly like a config.json with router_aux_loss_coef X."""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import check, finish, mpirun, read_metrics, run, synthetic_tokens, trident, write_shard  # noqa: E402

B, SEQ, STEPS, CLIP = 8, 32, 6, 0.5
# tiny: L 8, C 32, n_positions 64, vocab 1000 padded to 1024 (the padded rows are stored too).
L, C, NPOS, VOCAB, PADDED = 8, 32, 64, 1000, 1024
N_LOGICAL = 135744
N_ALLOCATED = N_LOGICAL + (PADDED - VOCAB) * C
FLOPS_PER_TOKEN = 6 * (N_LOGICAL - NPOS * C) + 12 * L * C * SEQ
CATEGORIES = {"parameters", "gradients", "optimizer_state", "activations", "workspace", "comm_buffers", "ckpt_snapshot",
              "offloaded", "packed_base", "total"}


def main():
    build = sys.argv[1]
    T = trident(build)
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(20000, VOCAB, 5))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(4000, VOCAB, 6))
        common = ["train", "--model", "tiny", "--data", f"{d}/syn", "--batch-size", str(B), "--seq-len", str(SEQ),
                  "--steps", str(STEPS), "--grad-clip", str(CLIP), "--eval-every", "3", "--eval-batches", "2",
                  "--log-every", "100", "--lr", "3e-3"]
        rc, _, err = run([T] + common + ["--metrics", f"{d}/m.jsonl"])
        check("training with --metrics runs", rc == 0, err[-500:] if rc else "")
        if rc:
            return
        m = read_metrics(f"{d}/m.jsonl")
        check(f"{STEPS} metrics lines, steps 1..{STEPS}", [x["step"] for x in m] == list(range(1, STEPS + 1)))
        clipped = [x for x in m if x["grad_norm"] > CLIP]
        check("the run has clipped and unclipped steps (so both cases are checked)",
              0 < len(clipped) < len(m), str([x["grad_norm"] for x in m]))
        for x in m:
            s = x["step"]
            # torch.nn.utils.clip_grad_norm_'s factor clip / (norm + 1e-6) when below 1 (optim/grad_clip.h),
            # rounded to float32 (relative 2^-24).
            coef = CLIP / (x["grad_norm"] + 1e-6)
            want = coef if coef < 1 else 1.0
            check(f"step {s}: clip_scale {x['clip_scale']:.7g} = "
                  f"{'clip / (grad_norm + 1e-6)' if want < 1 else '1'} (grad_norm {x['grad_norm']:.4g})",
                  abs(x["clip_scale"] - want) <= 2 ** -24 * want and (x["clip_scale"] < 1) == (x["grad_norm"] > CLIP))
            check(f"step {s}: tokens = step * B * T", x["tokens"] == s * B * SEQ, str(x["tokens"]))
            check(f"step {s}: tokens_per_s = B * T / step time",
                  x["tokens_per_s"] > 0 and abs(x["tokens_per_s"] * x["step_ms"] / 1e3 - B * SEQ) < 1e-6 * B * SEQ,
                  f"{x['tokens_per_s']} tok/s, {x['step_ms']} ms")
            mem = x["memory"]
            check(f"step {s}: memory has every category, exact 4/4/8 bytes per element for the state",
                  set(mem) == CATEGORIES and mem["parameters"] == 4 * N_ALLOCATED and
                  mem["gradients"] == 4 * N_ALLOCATED and mem["optimizer_state"] == 8 * N_ALLOCATED and
                  mem["activations"] > 0 and mem["offloaded"] == 0 and mem["packed_base"] == 0 and
                  mem["total"] >= sum(v for k, v in mem.items() if k != "total"),
                  str(mem))
            check(f"step {s}: val_loss exactly on evaluation steps", ("val_loss" in x) == (s % 3 == 0))
            check(f"step {s}: no pipeline_idle without a pipeline", "pipeline_idle" not in x)
        peaks = [x["tokens_per_s"] * FLOPS_PER_TOKEN / x["mfu"] for x in m]
        check("mfu = tokens_per_s * (6N + 12 L C T) / one peak for the whole run",
              max(peaks) - min(peaks) <= 1e-9 * max(peaks), str(peaks))
        check("the peak is a plausible sgemm rate (1e8..1e13 FLOP/s) and 0 < mfu < 1",
              1e8 < peaks[0] < 1e13 and all(0 < x["mfu"] < 1 for x in m), f"peak {peaks[0]:.3g}")

        rc, _, err = run([mpirun(), "-n", "2", T] + common + ["--pp", "2", "--grad-accum", "2",
                                                             "--metrics", f"{d}/pp.jsonl"])
        check("a 2-stage pipeline run with --metrics", rc == 0, err[-500:] if rc else "")
        if rc == 0:
            pm = read_metrics(f"{d}/pp.jsonl")
            check("pipeline_idle on every step of a pipeline run, a fraction in (0, 1)",
                  len(pm) == STEPS and all(0 < x.get("pipeline_idle", -1) < 1 for x in pm),
                  str([x.get("pipeline_idle") for x in pm]))


def mixtral():
    import json
    build = sys.argv[1]
    T = trident(build)
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(20000, VOCAB, 5))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(4000, VOCAB, 6))
        common = ["train", "--data", f"{d}/syn", "--batch-size", str(B), "--seq-len", str(SEQ), "--steps", "3",
                  "--eval-every", "0", "--log-every", "100", "--lr", "3e-3"]
        rc, _, err = run([T] + common + ["--model", "mixtral-tiny", "--ckpt-dir", f"{d}/ck", "--metrics", f"{d}/m.jsonl"])
        check("a Mixtral run with --metrics", rc == 0, err[-500:] if rc else "")
        if rc:
            return
        m = read_metrics(f"{d}/m.jsonl")
        E, K, L_MOE = 4, 2, 4  # mixtral-tiny
        for x in m:
            lo, hi = x["expert_load"]["min"], x["expert_load"]["max"]
            check(f"step {x['step']}: expert_load has min and max per layer with min*E <= k*tokens <= max*E",
                  len(lo) == len(hi) == L_MOE and all(0 <= a <= b and a * E <= K * B * SEQ <= b * E for a, b in zip(lo, hi)),
                  str(x["expert_load"]))
            rh = x.get("routing_hash", [])
            check(f"step {x['step']}: routing_hash is one 64-bit hex value per MoE layer",
                  len(rh) == L_MOE and all(isinstance(h, str) and len(h) == 16 and int(h, 16) >= 0 for h in rh), str(rh))
        check("routing_hash differs between steps (the weights moved, so did some routing)",
              len({tuple(x["routing_hash"]) for x in m}) == len(m), str([x["routing_hash"] for x in m]))
        # The flag and the config.json key are one fact: the same run either way; a different
        # coefficient changes the gradient.
        with open(f"{d}/ck/step_00000003/config.json") as f:
            cfg = json.load(f)
        cfg["router_aux_loss_coef"] = 0.5
        with open(f"{d}/half.json", "w") as f:
            json.dump(cfg, f)
        runs = {}
        for name, flags in [("config.json 0.5", ["--model", f"{d}/half.json"]),
                            ("flag 0.5", ["--model", "mixtral-tiny", "--moe-aux-loss-coef", "0.5"])]:
            rc, _, err = run([T] + common + flags + ["--metrics", f"{d}/{len(runs)}.jsonl"])
            check(f"Mixtral run with {name}", rc == 0, err[-500:] if rc else "")
            runs[name] = [(x["loss"], x["grad_norm"]) for x in read_metrics(f"{d}/{len(runs)}.jsonl")] if rc == 0 else None
        check("--moe-aux-loss-coef 0.5 trains exactly as router_aux_loss_coef 0.5 in config.json",
              runs["flag 0.5"] is not None and runs["flag 0.5"] == runs["config.json 0.5"], str(runs))
        check("a different aux coefficient changes the gradient",
              runs["flag 0.5"] is not None and runs["flag 0.5"][0][1] != m[0]["grad_norm"],
              f"{runs['flag 0.5']} vs {m[0]['grad_norm']}")


if __name__ == "__main__":
    main()
    mixtral()
    finish()
