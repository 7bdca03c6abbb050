"""A checkpoint records the tokenizer of the shards it was trained on, and nothing reads its ids
with another vocabulary silently: `train` copies PREFIX_meta.json's "tokenizer" into config.json
(`trident_tokenizer`), `quantize` keeps it; `generate` without --tokenizer uses it (the prompt's
ids are that tokenizer's) and refuses another one; `eval` refuses a shard whose meta names
another tokenizer; `train --resume` / `--init-from` refuse shards of another tokenizer; a
malformed meta file is one clear error. The shards are synthetic ids below 1000, valid in both
GPT-2's and cl100k's vocabularies, so only the recorded name tells them apart."""
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import check, finish, run, synthetic_tokens, trident, write_shard  # noqa: E402

VOCAB = 50257  # at most both tokenizers' vocabularies, so only the recorded name can refuse
# " a" is one token in each: GPT-2 257, cl100k 264.
PROMPT, GPT2_ID, CL100K_ID = " a", 257, 264


def shards(prefix, tokenizer):
    write_shard(f"{prefix}_train.bin", synthetic_tokens(3000, 1000, 1))
    write_shard(f"{prefix}_val.bin", synthetic_tokens(600, 1000, 2))
    with open(f"{prefix}_meta.json", "w") as f:
        json.dump({"tokenizer": tokenizer, "vocab_size": 100277 if tokenizer == "cl100k" else 50257}, f)


def prompt_ids(err):
    for line in err.splitlines():
        if line.startswith("prompt ids:"):
            return [int(x) for x in line.split(":", 1)[1].split()]
    return None


def main():
    T = trident(sys.argv[1])
    with tempfile.TemporaryDirectory() as d:
        shards(f"{d}/cl", "cl100k")
        shards(f"{d}/gp", "gpt2")
        base = [T, "train", "--model", "tiny", "--vocab-size", str(VOCAB), "--steps", "2", "--batch-size", "2",
                "--seq-len", "16", "--eval-every", "0"]
        rc, _, err = run(base + ["--data", f"{d}/cl", "--ckpt-dir", f"{d}/ck"])
        check("train on shards whose meta names cl100k", rc == 0, err[-500:])
        if rc:
            return
        with open(f"{d}/ck/step_00000002/config.json") as f:
            recorded = json.load(f).get("trident_tokenizer")
        check("config.json records trident_tokenizer cl100k", recorded == "cl100k", str(recorded))

        gen = [T, "generate", "--prompt", PROMPT, "--max-new-tokens", "2", "--print-ids"]
        rc, _, err = run(gen + ["--ckpt", f"{d}/ck"])
        ids = prompt_ids(err)
        check("generate without --tokenizer encodes the prompt with the recorded cl100k",
              rc == 0 and ids == [CL100K_ID], err[-400:] if rc else str(ids))
        rc, _, err = run(gen + ["--ckpt", f"{d}/ck", "--tokenizer", "gpt2"])
        check("generate --tokenizer gpt2 on a cl100k checkpoint is refused, naming both",
              rc != 0 and "trained on cl100k tokens" in err and "gpt2" in err, err[-400:])

        rc, _, err = run([T, "quantize", "--ckpt", f"{d}/ck", "--out", f"{d}/q8", "--format", "int8"])
        check("quantize the cl100k checkpoint", rc == 0, err[-400:])
        if rc == 0:
            with open(f"{d}/q8/config.json") as f:
                q_recorded = json.load(f).get("trident_tokenizer")
            check("the quantized config.json keeps trident_tokenizer", q_recorded == "cl100k", str(q_recorded))
            rc, _, err = run(gen + ["--ckpt", f"{d}/q8", "--tokenizer", "gpt2"])
            check("generate refuses gpt2 for the quantized cl100k checkpoint", rc != 0 and "cl100k" in err,
                  err[-400:])

        rc, _, err = run([T, "eval", "--ckpt", f"{d}/ck", "--data", f"{d}/gp_val.bin", "--max-tokens", "32",
                          "--seq-len", "16"])
        check("eval on a shard of another tokenizer is refused", rc != 0 and "holds gpt2 tokens" in err, err[-400:])
        rc, _, err = run([T, "eval", "--ckpt", f"{d}/ck", "--data", f"{d}/cl_val.bin", "--max-tokens", "32",
                          "--seq-len", "16"])
        check("eval on a shard of the same tokenizer runs", rc == 0, err[-400:])

        rc, _, err = run([T, "train", "--resume", f"{d}/ck", "--data", f"{d}/gp", "--steps", "3"])
        check("train --resume on shards of another tokenizer is refused", rc != 0 and "hold gpt2 tokens" in err,
              err[-400:])
        rc, _, err = run(base + ["--init-from", f"{d}/ck", "--data", f"{d}/gp", "--ckpt-dir", f"{d}/ft"])
        check("train --init-from on shards of another tokenizer is refused", rc != 0 and "hold gpt2 tokens" in err,
              err[-400:])

        with open(f"{d}/gp_meta.json", "w") as f:
            f.write("{not json")
        rc, _, err = run(base + ["--data", f"{d}/gp"])
        check("a malformed meta file is one clear error naming it",
              rc != 0 and "gp_meta.json is not a JSON object" in err and "Traceback" not in err, err[-400:])


if __name__ == "__main__":
    main()
    finish()
