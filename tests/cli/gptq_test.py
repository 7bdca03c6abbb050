"""`trident quantize --method gptq` end to end (quant/gptq.h, infer/gptq_calibrate.h) on tiny trained
models of both families: every layer matrix's relative output error on its calibration inputs
(printed per matrix) is no larger than round-to-nearest's on the same inputs (the objective GPTQ
minimises: it must not be worse); the checkpoint says quant_method trident-gptq and is read
unchanged by `ckpt info`, `eval` (loss reported next to RTN's and fp32's), `generate` and a QLoRA
`train`; bad input gets one clear error each: gptq without --calib, calibration flags with rtn,
an unknown method, a missing / corrupt calibration shard, too few tokens, a vocabulary mismatch,
a window longer than the position table."""
import json
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import REPO, check, finish, run, synthetic_tokens, trident, write_shard  # noqa: E402

VOCAB = 1000
TOKENIZER = os.path.join(REPO, "data", "assets", "gpt2")
MATRIX = re.compile(r"^gptq matrix (\S+) (\d+)x(\d+): relative output error rtn (\S+) gptq (\S+) ratio (\S+)$")


def eval_loss(T, ck, val):
    rc, out, err = run([T, "eval", "--ckpt", ck, "--data", val, "--seq-len", "32"])
    return (json.loads(out.strip().splitlines()[-1])["val_loss"] if rc == 0 else None), (out + err)[-400:]


def main():
    T = trident(sys.argv[1])
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(5000, VOCAB, 1))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(1000, VOCAB, 2))
        calib, val = f"{d}/syn_train.bin", f"{d}/syn_val.bin"
        gptq = ["--method", "gptq", "--calib", calib, "--calib-tokens", "2048", "--calib-seq-len", "32"]
        # (model, matrices per layer, layers, formats): llama-tiny's 88-wide MLP takes no q4 group.
        for model, per_layer, layers, formats in (("tiny", 4, 8, [("int8", []), ("q4", ["--group-size", "32"])]),
                                                  ("llama-tiny", 7, 8, [("int8", [])])):
            ck = f"{d}/{model}"
            rc, _, err = run([T, "train", "--model", model, "--data", f"{d}/syn", "--steps", "30", "--lr", "1e-2",
                              "--batch-size", "4", "--seq-len", "32", "--eval-every", "0", "--log-every", "100",
                              "--ckpt-dir", ck])
            check(f"{model}: train a tiny checkpoint", rc == 0, err[-400:])
            if rc:
                return
            fp32, detail = eval_loss(T, ck, val)
            for fmt, extra in formats:
                losses = {}
                for method in ("rtn", "gptq"):
                    out = f"{d}/{model}_{fmt}_{method}"
                    flags = gptq if method == "gptq" else []
                    rc, o, err = run([T, "quantize", "--ckpt", ck, "--out", out, "--format", fmt, *extra, *flags])
                    check(f"{model} {fmt}: quantize --method {method}", rc == 0, err[-400:])
                    if rc:
                        continue
                    losses[method], detail = eval_loss(T, out, val)
                    check(f"{model} {fmt} {method}: eval reads it", losses[method] is not None, detail)
                    if method == "rtn":
                        continue
                    rows = [MATRIX.match(l) for l in o.splitlines() if l.startswith("gptq matrix")]
                    check(f"{model} {fmt}: a report line for each of the {per_layer * layers} layer matrices",
                          len(rows) == per_layer * layers and all(rows), o[-600:])
                    worse = [m.group(0) for m in rows if m and float(m.group(5)) > float(m.group(4))]
                    ratios = [float(m.group(6)) for m in rows if m]
                    check(f"{model} {fmt}: no matrix's output error above RTN's (gptq/rtn ratios "
                          f"{min(ratios, default=0):.3f}..{max(ratios, default=0):.3f})", not worse, "\n".join(worse))
                    check(f"{model} {fmt}: progress for every layer", err.count("gptq: layer ") == layers, err[-400:])
                    with open(f"{out}/config.json") as f:
                        qc = json.load(f)["quantization_config"]
                    check(f"{model} {fmt}: config names quant_method trident-gptq",
                          qc.get("quant_method") == "trident-gptq" and qc.get("format") == fmt, str(qc))
                    rc, o, err = run([T, "ckpt", "info", out])
                    check(f"{model} {fmt} gptq: ckpt info verifies it", rc == 0 and "method trident-gptq" in o,
                          (o + err)[-400:])
                    rc, o, err = run([T, "generate", "--ckpt", out, "--tokenizer", TOKENIZER, "--prompt", " a b",
                                      "--temperature", "0", "--max-new-tokens", "8"])
                    check(f"{model} {fmt} gptq: generate reads it", rc == 0, err[-400:])
                if len(losses) == 2:
                    print(f"     {model} {fmt}: eval loss fp32 {fp32:.6f} rtn {losses['rtn']:.6f} "
                          f"gptq {losses['gptq']:.6f}", flush=True)
                    # Not a quality test (30 steps on synthetic tokens): GPTQ must not break the model.
                    check(f"{model} {fmt}: gptq eval loss within 10% of fp32",
                          abs(losses["gptq"] - fp32) <= 0.1 * fp32, f"{losses} fp32 {fp32}")

        # A GPTQ q4 checkpoint as a QLoRA base: the same format, so train reads it unchanged.
        rc, _, err = run([T, "train", "--init-from", f"{d}/tiny_q4_gptq", "--lora-rank", "2", "--lora-targets",
                          "c_attn,c_fc", "--data", f"{d}/syn", "--steps", "2", "--batch-size", "2", "--seq-len", "32",
                          "--eval-every", "0", "--ckpt-dir", f"{d}/qlora"])
        check("a GPTQ q4 checkpoint is a QLoRA base", rc == 0, err[-400:])

        ck = f"{d}/tiny"
        with open(f"{d}/corrupt.bin", "wb") as f:
            f.write(b"not a token shard at all" * 64)
        write_shard(f"{d}/big_vocab.bin", [(i * 37) % 1500 for i in range(4096)])
        bad = [
            (["--method", "gptq"], "--method gptq needs --calib"),
            (["--calib", calib], "are for --method gptq"),
            (["--calib-tokens", "64"], "are for --method gptq"),
            (["--method", "awq", "--calib", calib], "unknown --method 'awq'"),
            (["--method", "gptq", "--calib", f"{d}/missing.bin"], "cannot open token shard"),
            (["--method", "gptq", "--calib", f"{d}/corrupt.bin"], "is not a token shard"),
            (["--method", "gptq", "--calib", calib, "--calib-tokens", "100000"], "fewer than --calib-tokens 100000"),
            (["--method", "gptq", "--calib", calib, "--calib-tokens", "16", "--calib-seq-len", "32"],
             "less than one window"),
            (["--method", "gptq", "--calib", f"{d}/big_vocab.bin", "--calib-tokens", "1024"], "outside the vocabulary [0, 1000)"),
            (["--method", "gptq", "--calib", calib, "--calib-seq-len", "65"], "n_positions 64"),
        ]
        for flags, message in bad:
            rc, _, err = run([T, "quantize", "--ckpt", ck, "--out", f"{d}/bad", "--format", "int8", *flags])
            check(f"quantize {' '.join(os.path.basename(f) for f in flags)} is refused", rc != 0 and message in err,
                  err[-400:])
            check("  and writes nothing", not os.path.exists(f"{d}/bad"))
        # Mixtral: an expert's H would see only its routed tokens; refused before calibrating.
        mix = f"{d}/mixtral"
        rc, _, err = run([T, "train", "--model", "mixtral-tiny", "--data", f"{d}/syn", "--steps", "1",
                          "--batch-size", "2", "--seq-len", "32", "--eval-every", "0", "--ckpt-dir", mix])
        check("mixtral-tiny: train a one-step checkpoint", rc == 0, err[-400:])
        rc, _, err = run([T, "quantize", "--ckpt", mix, "--out", f"{d}/bad", "--format", "int8", *gptq])
        check("quantize --method gptq of a mixtral checkpoint is refused, pointing to rtn",
              rc != 0 and "does not support the mixtral family" in err and "--method rtn" in err, err[-400:])
        check("  and writes nothing", not os.path.exists(f"{d}/bad"))
    finish()


if __name__ == "__main__":
    main()
