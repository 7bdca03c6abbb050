"""LoRA fine-tuning end to end (docs/lora.md): a tiny Llama and GPT-2 trained briefly are the
frozen bases; `train --init-from BASE --lora-rank 4 --lora-targets ...` then trains only the
adapters. Checked: the base weights in the LoRA run's checkpoint are bitwise the base's; the
validation loss falls; the checkpoint holds the adapters in PEFT's names with PEFT's
adapter_config.json, `ckpt info` verifies it, and a resumed run is bitwise the uninterrupted one;
the optimizer state is the adapters' only (8 bytes per adapter parameter); dp2 (ZeRO 0-3), tp2
(with and without sequence parallelism), pp2 and dp2 x tp2 follow the single-process loss curve
and grad norm within the layout bounds of equivalence.py; and bad input gets one clear error each:
an unknown target for the family, a rank larger than a target allows, LoRA without a base,
targets without a rank (Mixtral's experts: unit.nn_lora_test)."""
import json
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from equivalence import EPS, deviations  # noqa: E402
from harness import check, finish, latest, mpirun, read_metrics, run, synthetic_tokens, trident, write_shard  # noqa: E402
import safetensors_stdlib  # noqa: E402

VOCAB = 512
BATCH, SEQ, STEPS, LR = 8, 32, 12, 1e-2
TARGETS = {"llama-tiny": "q,v,o,up,down", "tiny": "c_attn,attn.c_proj,c_fc,mlp.c_proj"}


def main():
    T = trident(sys.argv[1])
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(20000, VOCAB, 3))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(2000, VOCAB, 4))
        common = ["--data", f"{d}/syn", "--batch-size", str(BATCH), "--seq-len", str(SEQ), "--eval-every", "0",
                  "--log-every", "100", "--seed", "5"]
        for model, targets in TARGETS.items():
            base_dir = f"{d}/{model}_base"
            rc, _, err = run([T, "train", "--model", model, "--vocab-size", str(VOCAB), "--steps", "10",
                              "--lr", "1e-2", "--ckpt-dir", base_dir] + common)
            check(f"{model}: train a base", rc == 0, err[-600:])
            if rc:
                continue
            base = f"{base_dir}/{latest(base_dir)}"
            lora = ["train", "--init-from", base, "--lora-rank", "4", "--lora-alpha", "8", "--lora-targets", targets,
                    "--steps", str(STEPS), "--lr", str(LR), "--lr-schedule", "constant", "--eps", str(EPS)] + common
            ref_dir = f"{d}/{model}_ref"
            rc, out, lora_err = run([T] + lora + ["--ckpt-dir", ref_dir, "--metrics", f"{d}/{model}_ref.jsonl"])
            err = lora_err
            check(f"{model}: LoRA run from the base", rc == 0, err[-1500:])
            if rc:
                continue
            ref = read_metrics(f"{d}/{model}_ref.jsonl")
            steps = [m for m in ref if "loss" in m and "grad_norm" in m]
            # Learning: the validation loss (fixed batches) after 40 adapter steps is below the one
            # after 1 (each step's training batch differs, too noisy to compare on tiny models).
            val = {}
            for s in (1, 40):
                rc, _, err = run([T, "train"] + common +
                                 ["--init-from", base, "--lora-rank", "4", "--lora-alpha", "8", "--lora-targets",
                                  targets, "--steps", str(s), "--eval-every", str(s), "--eval-batches", "8",
                                  "--lr", "1e-2", "--metrics", f"{d}/{model}_val{s}.jsonl"])
                val[s] = [m["val_loss"] for m in read_metrics(f"{d}/{model}_val{s}.jsonl") if "val_loss" in m] if rc == 0 else [0]
            check(f"{model}: LoRA lowers the validation loss", val[40][-1] < val[1][-1], f"{val[1]} -> {val[40]}")
            before = safetensors_stdlib.load(f"{base}/model.safetensors")
            after = safetensors_stdlib.load(f"{ref_dir}/{latest(ref_dir)}/model.safetensors")
            changed = [n for n in before if before[n] != after.get(n)]
            check(f"{model}: the frozen base is bitwise unchanged after training", not changed, f"changed: {changed[:4]}")
            # The checkpoint: PEFT's names and config beside the base, and a bitwise resume.
            step_dir = f"{ref_dir}/{latest(ref_dir)}"
            adapters = safetensors_stdlib.load(f"{step_dir}/adapter_model.safetensors")
            with open(f"{step_dir}/adapter_config.json") as f:
                acfg = json.load(f)
            prefix = "base_model.model." + ("transformer." if model == "tiny" else "")
            check(f"{model}: adapters saved in PEFT's names",
                  adapters and all(n.startswith(prefix) and n.endswith((".lora_A.weight", ".lora_B.weight")) for n in adapters),
                  f"{sorted(adapters)[:2]}")
            want = {"peft_type": "LORA", "r": 4, "lora_alpha": 8.0, "lora_dropout": 0.0, "bias": "none",
                    "task_type": "CAUSAL_LM", "fan_in_fan_out": model == "tiny", "base_model_name_or_path": base}
            check(f"{model}: adapter_config.json is PEFT's", all(acfg.get(k) == v for k, v in want.items()) and
                  len(acfg["target_modules"]) == len(targets.split(",")), json.dumps(acfg))
            rc, out, err = run([T, "ckpt", "info", step_dir])
            check(f"{model}: ckpt info verifies the LoRA checkpoint", rc == 0 and "LoRA adapters complete" in out,
                  (out + err)[-600:])
            half = f"{d}/{model}_half"
            rc, _, err = run([T] + lora + ["--ckpt-dir", half, "--stop-after", str(STEPS // 2)])
            rc2, _, err2 = run([T, "train", "--resume", half])
            same = rc == 0 and rc2 == 0 and all(
                open(f"{half}/{latest(half)}/{f}", "rb").read() == open(f"{step_dir}/{f}", "rb").read()
                for f in ("adapter_model.safetensors", "optimizer.safetensors", "model.safetensors"))
            check(f"{model}: a resumed LoRA run is bitwise the uninterrupted one", same, (err + err2)[-800:])
            rc, _, err = run([T, "train", "--resume", half, "--lora-rank", "8"])
            check(f"{model}: resuming with another --lora-rank is one clear error",
                  rc != 0 and "--lora-rank" in err and "cannot be honoured" in err and "--init-from" in err, err[-400:])
            # The checkpoint's 'latest' file itself names the run as well as its directory does.
            rc, _, err = run([T, "train", "--resume", f"{half}/latest", "--steps", str(STEPS + 1)])
            check(f"{model}: --resume DIR/latest continues the run", rc == 0, err[-400:])
            # merge-lora: a full checkpoint in which only the adapted weights differ from the base
            # (that its logits are the adapter model's: unit.nn_lora_test LoraMerge).
            merged = f"{d}/{model}_merged"
            rc, out, err = run([T, "merge-lora", "--base", base, "--adapter", ref_dir, "--out", merged])
            check(f"{model}: merge-lora", rc == 0, (out + err)[-600:])
            if rc == 0:
                m = safetensors_stdlib.load(f"{merged}/model.safetensors")
                adapted = {n[len(prefix):-len(".lora_A.weight")] + ".weight" for n in adapters if n.endswith(".lora_A.weight")}
                adapted = {n[len("transformer."):] if n.startswith("transformer.") else n for n in adapted}
                same = [n for n in before if n not in adapted and m[n] != before[n]]
                moved = [n for n in adapted if m[n] == before[n]]
                check(f"{model}: merge-lora changes exactly the adapted weights", m.keys() == before.keys() and not same
                      and not moved and adapted, f"unadapted changed {same[:3]}, adapted unchanged {moved[:3]}")
                rc, out, err = run([T, "ckpt", "info", merged])
                check(f"{model}: the merged checkpoint verifies", rc == 0, (out + err)[-400:])
                rc, out, err = run([T, "merge-lora", "--base", base, "--adapter", ref_dir, "--out", merged])
                check(f"{model}: merge-lora refuses a non-empty --out", rc != 0 and "not empty" in err, err[-300:])
            # AdamW's two fp32 moments for the adapters only: 8 bytes per adapter parameter.
            n = re.search(r"lora: (\d+) adapter parameters", lora_err)
            opt = ref[0]["memory"]["optimizer_state"]
            check(f"{model}: optimizer state is the adapters' only", n is not None and opt == 8 * int(n.group(1)),
                  f"optimizer_state {opt} B, adapters {n.group(1) if n else '?'}")
            layouts = [("dp2", 2, ["--dp", "2"]), ("dp2 zero1", 2, ["--dp", "2", "--zero", "1"]),
                       ("dp2 zero2", 2, ["--dp", "2", "--zero", "2"]), ("dp2 zero3", 2, ["--dp", "2", "--zero", "3"]),
                       ("tp2", 2, ["--tp", "2"]), ("tp2 sp", 2, ["--tp", "2", "--sequence-parallel"]),
                       ("pp2", 2, ["--pp", "2", "--grad-accum", "2"]), ("dp2 x tp2", 4, ["--dp", "2", "--tp", "2"])]
            for tag, n, extra in layouts:
                name = tag.replace(" ", "_")
                rc, _, err = run([mpirun(), "-n", str(n), T] + lora + extra +
                                 ["--threads", "1", "--metrics", f"{d}/{model}_{name}.jsonl"], timeout=900)
                check(f"{model}: LoRA {tag} runs", rc == 0, err[-1500:])
                if rc:
                    continue
                got = [m for m in read_metrics(f"{d}/{model}_{name}.jsonl") if "loss" in m and "grad_norm" in m]
                bad_loss, bad_norm = deviations(got, steps, BATCH, SEQ, VOCAB)
                check(f"{model}: LoRA {tag} == single process", len(got) == len(steps) and not bad_loss and not bad_norm,
                      f"steps off in loss {bad_loss}, grad norm {bad_norm}")
        # An adapter trained on another base is refused.
        rc, _, err = run([T, "merge-lora", "--base", f"{d}/tiny_base/{latest(f'{d}/tiny_base')}", "--adapter",
                          f"{d}/llama-tiny_ref", "--out", f"{d}/cross"])
        check("merge-lora refuses an adapter of another model", rc != 0 and "not a gpt2 LoRA target" in err, err[-300:])
        # Bad input: one clear error each.
        base_dir = f"{d}/llama-tiny_base"
        base = f"{base_dir}/{latest(base_dir)}"
        bad = [
            (["--init-from", base, "--lora-rank", "4", "--lora-targets", "q,c_attn"], "unknown LoRA target c_attn"),
            (["--init-from", base, "--lora-rank", "4096", "--lora-targets", "q"], "larger than target q"),
            (["--model", "llama-tiny", "--lora-rank", "4", "--lora-targets", "q"], "frozen base"),
            (["--init-from", base, "--lora-targets", "q"], "without --lora-rank"),
        ]
        for flags, needle in bad:
            rc, _, err = run([T, "train", "--steps", "1"] + flags + common)
            check(f"bad input {' '.join(flags[-2:])}: clear error", rc != 0 and needle in err and "Segmentation" not in err,
                  err[-400:])
    finish()


if __name__ == "__main__":
    main()
