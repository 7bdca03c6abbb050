"""Adapters know their base's identity (ckpt/base_fingerprint.h, docs/lora.md "Which base"): a LoRA run
records its base's fingerprint (a hash of the fp32 origin's tensors) in every step directory's
trident.json; eval/generate --adapter and merge-lora refuse a base with another fingerprint (one error
naming both checkpoints and both fingerprints) unless --allow-other-base, which applies them with a note.

Two bases of the same shape (tiny GPT-2, n_embd 64) that differ only in their training seed: family and
shape checks pass for both, so only the fingerprint tells them apart. The q4 quantization of base A, its
dequantization, and a QLoRA run on the q4 version carry A's fingerprint, so LoRA adapters of A apply to
its q4 version and QLoRA adapters merge into the dequantized values and apply to A itself. --resume
carries the fingerprint over; a step directory without one (an older run) is applied with a note that it
was not checked.

A base that records its files' checksums (every Trident checkpoint) has a "files:" fingerprint derived from
them, so the check reads no tensor (TRIDENT_TRACE_FINGERPRINT=1 says where each fingerprint came from); a
directory without them (a Hugging Face directory: here a copy of A or B without trident.json) has the tensor
hash. Adapters and bases of the two kinds are compared by tensor hash, so an adapter recorded before
"files:" fingerprints (one trained on the copy of A) still applies to A and is still refused on B."""
import json
import os
import re
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import check, finish, latest, run, synthetic_tokens, trident, write_shard  # noqa: E402

VOCAB, BATCH, SEQ = 512, 8, 32
MODEL = ["--model", "tiny", "--n-embd", "64", "--vocab-size", str(VOCAB)]
LORA = ["--lora-rank", "4", "--lora-alpha", "8", "--lora-targets", "c_attn,attn.c_proj,c_fc,mlp.c_proj"]
KEY = "lora_base_fingerprint"


def main():
    T = trident(sys.argv[1])
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(20000, VOCAB, 3))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(2000, VOCAB, 4))
        val = f"{d}/syn_val.bin"
        common = ["--data", f"{d}/syn", "--batch-size", str(BATCH), "--seq-len", str(SEQ), "--eval-every", "0",
                  "--log-every", "100", "--threads", "1"]

        def train(out, *flags, seed="5"):
            rc, _, err = run([T, "train"] + list(flags) + common + ["--seed", seed, "--ckpt-dir", out])
            check(f"train {os.path.basename(out)}", rc == 0, "" if rc == 0 else err[-600:])
            return (f"{out}/{latest(out)}" if rc == 0 else None), err

        def recorded(step):
            return json.load(open(f"{step}/trident.json")).get(KEY)

        def config_key(path):
            return json.load(open(f"{path}/config.json")).get("trident_base_fingerprint")

        def evaluate(*flags):
            return run([T, "eval", "--data", val, "--seq-len", str(SEQ)] + list(flags))

        base_a, _ = train(f"{d}/a", *MODEL, "--steps", "2", seed="5")
        base_b, _ = train(f"{d}/b", *MODEL, "--steps", "2", seed="6")
        if base_a is None or base_b is None:
            return
        step, err = train(f"{d}/lora", "--init-from", base_a, *LORA, "--steps", "3", "--stop-after", "2", "--lr", "1e-2")
        if step is None:
            return
        fp_a = recorded(step)
        check("the LoRA run records a 'files:' base fingerprint (from A's recorded checksums) in trident.json and "
              "prints it", fp_a is not None and re.fullmatch(r"files:[0-9a-f]{16}", fp_a) is not None and
              f"base fingerprint {fp_a}" in err, f"{fp_a!r} {err[-300:]}")
        step_b, _ = train(f"{d}/lora_b", "--init-from", base_b, *LORA, "--steps", "2", "--lr", "1e-2")
        check("base B (another seed, same shape) has another fingerprint", step_b is not None and
              recorded(step_b) not in (None, fp_a), f"{step_b and recorded(step_b)} vs {fp_a}")

        # The right base: applied, no note, and its fingerprint from the recorded checksums (no third read).
        rc, out, err = run([T, "eval", "--data", val, "--seq-len", str(SEQ), "--ckpt", base_a, "--adapter", step],
                           env={"TRIDENT_TRACE_FINGERPRINT": "1"})
        check("eval --ckpt A --adapter (trained on A): applied, no note", rc == 0 and "applied unmerged" in err and
              "note:" not in err, err[-400:])
        check("... A's fingerprint comes from its recorded checksums: no tensor hashed",
              f"fingerprint: {base_a}: from the recorded checksums" in err and "hashed its tensors" not in err,
              "\n".join(line for line in err.splitlines() if line.startswith("fingerprint:")) or err[-400:])

        # Another base of the same family and shape: one clear error naming both, in every command.
        for cmd, flags in [("eval", ["--data", val, "--seq-len", str(SEQ), "--ckpt", base_b, "--adapter", step]),
                           ("generate", ["--max-new-tokens", "2", "--ckpt", base_b, "--adapter", step]),
                           ("merge-lora", ["--base", base_b, "--adapter", step, "--out", f"{d}/merged_b"])]:
            rc, out, err = run([T, cmd] + flags)
            fp_b = recorded(step_b) if step_b else "?"
            check(f"{cmd} onto base B: one error naming both bases, both fingerprints and --allow-other-base",
                  rc != 0 and base_a in err and base_b in err and fp_a in err and str(fp_b) in err and
                  "--allow-other-base" in err and "Segmentation" not in err and "val_loss" not in out, err[-500:])
        check("merge-lora onto B wrote nothing", not os.path.exists(f"{d}/merged_b") or not os.listdir(f"{d}/merged_b"))
        rc, out, err = evaluate("--ckpt", base_b, "--adapter", step, "--allow-other-base")
        check("eval --allow-other-base applies them, with a note naming both", rc == 0 and "val_loss" in out and
              "note: --allow-other-base" in err and fp_a in err, err[-400:])
        rc, out, err = run([T, "merge-lora", "--base", base_b, "--adapter", step, "--out", f"{d}/merged_b2",
                            "--allow-other-base"])
        check("merge-lora --allow-other-base merges", rc == 0 and "merged 32 adapters" in out, (out + err)[-400:])

        # The q4 version of A (and its dequantized values) is the same base.
        qa, deq = f"{d}/qa", f"{d}/deq"
        rc, out, err = run([T, "quantize", "--ckpt", base_a, "--out", qa, "--format", "q4", "--group-size", "32"])
        rc2, out2, err2 = run([T, "dequantize", "--ckpt", qa, "--out", deq])
        if rc or rc2:
            check("quantize, dequantize", False, (out + err + out2 + err2)[-600:])
            return
        check("quantize and dequantize record A's fingerprint in config.json",
              config_key(qa) == fp_a and config_key(deq) == fp_a, f"{config_key(qa)} {config_key(deq)} vs {fp_a}")
        rc, out, err = evaluate("--ckpt", qa, "--adapter", step)
        check("LoRA adapters of A apply to A's q4 version, no note", rc == 0 and "note:" not in err, err[-400:])
        qstep, _ = train(f"{d}/qlora", "--init-from", qa, *LORA, "--steps", "2", "--lr", "1e-2")
        if qstep is None:
            return
        check("the QLoRA run on A's q4 version records A's fingerprint", recorded(qstep) == fp_a,
              f"{recorded(qstep)} vs {fp_a}")
        for what, flags in [("eval --ckpt A --adapter QLORA", ["--ckpt", base_a, "--adapter", qstep]),
                            ("eval --ckpt DEQ --adapter LORA", ["--ckpt", deq, "--adapter", step])]:
            rc, out, err = evaluate(*flags)
            check(f"{what}: the same base, no note", rc == 0 and "note:" not in err, err[-400:])
        rc, out, err = run([T, "merge-lora", "--base", deq, "--adapter", qstep, "--out", f"{d}/merged_q"])
        check("merge-lora --base DEQ --adapter QLORA (the recipe for QLoRA adapters) merges", rc == 0, (out + err)[-400:])
        qb = f"{d}/qb"
        rc, _, err = run([T, "quantize", "--ckpt", base_b, "--out", qb, "--format", "q4", "--group-size", "32"])
        rc, out, err = evaluate("--ckpt", qb, "--adapter", step)
        check("LoRA adapters of A onto B's q4 version: the error", rc != 0 and "--allow-other-base" in err, err[-400:])

        # Directories without recorded checksums (Hugging Face ones: copies without trident.json) have the tensor
        # hash; an adapter recorded with one (as before "files:" fingerprints) is compared by tensor hash.
        hf_a, hf_b = f"{d}/hf_a", f"{d}/hf_b"
        for src, dst in ((base_a, hf_a), (base_b, hf_b)):
            shutil.copytree(src, dst)
            for f in ("trident.json", "optimizer.safetensors"):
                if os.path.exists(f"{dst}/{f}"):
                    os.remove(f"{dst}/{f}")
        old_kind, err = train(f"{d}/lora_hf", "--init-from", hf_a, *LORA, "--steps", "2", "--lr", "1e-2")
        if old_kind is None:
            return
        fp_old = recorded(old_kind)
        check("a LoRA run on a directory without checksums records the 16-hex-digit tensor hash",
              fp_old is not None and re.fullmatch(r"[0-9a-f]{16}", fp_old) is not None, str(fp_old))
        for what, flags, ok in [("a tensor-hash adapter of A on A (files: kind)", ["--ckpt", base_a, "--adapter", old_kind], True),
                                ("a tensor-hash adapter of A on B", ["--ckpt", base_b, "--adapter", old_kind], False),
                                ("A's files: adapter on the copy of A", ["--ckpt", hf_a, "--adapter", step], True),
                                ("A's files: adapter on the copy of B", ["--ckpt", hf_b, "--adapter", step], False)]:
            rc, out, err = evaluate(*flags)
            if ok:
                check(f"{what}: the same base by tensor hash, applied, no note", rc == 0 and "note:" not in err, err[-400:])
            else:
                check(f"{what}: refused, naming --allow-other-base", rc != 0 and "--allow-other-base" in err and
                      "Segmentation" not in err, err[-400:])

        # A step directory without a fingerprint (an older run): applied, with a note that it was not checked.
        old = f"{d}/old_step"
        shutil.copytree(step, old)
        state = json.load(open(f"{old}/trident.json"))
        state.pop(KEY)
        json.dump(state, open(f"{old}/trident.json", "w"))
        rc, out, err = evaluate("--ckpt", base_b, "--adapter", old)
        check("an adapter without a recorded fingerprint: applied with a 'not checked' note",
              rc == 0 and "records no base fingerprint" in err and "not checked" in err, err[-400:])

        # --resume carries the fingerprint over.
        rc, _, err = run([T, "train", "--resume", f"{d}/lora"])
        resumed = f"{d}/lora/{latest(f'{d}/lora')}" if rc == 0 else None
        check("--resume keeps the fingerprint in the new step directory", resumed is not None and resumed != step and
              recorded(resumed) == fp_a, err[-400:] if rc else f"{resumed and recorded(resumed)}")


if __name__ == "__main__":
    main()
    finish()
