"""`trident generate` beyond its error cases: greedy is deterministic; a seed reproduces a
sample and another seed changes it; --top-k 1 is greedy; --max-new-tokens N yields N tokens;
generation runs past the position table by cropping the context to its last n_positions
tokens (and only those decide the next token); every token is inside the model's vocabulary;
prompts outside it and models larger than the tokenizer are refused. Token ids come from
--print-ids. The model is the tiny preset after 30 steps on a sequence whose next token
follows from the previous one, so its greedy choice depends on the context."""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import REPO, check, finish, run, synthetic_tokens, trident, write_shard  # noqa: E402

VOCAB, N_POSITIONS = 1000, 64
TOKENIZER = os.path.join(REPO, "data", "assets", "gpt2")  # scripts/setup.sh fetches it; ctest runs in build/


def main():
    build = sys.argv[1]
    T = trident(build)
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(5000, VOCAB, 1))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(1000, VOCAB, 2))
        train = [T, "train", "--model", "tiny", "--data", f"{d}/syn", "--steps", "30", "--lr", "1e-2",
                 "--batch-size", "4", "--seq-len", "32", "--eval-every", "0", "--log-every", "100"]
        rc, _, err = run(train + ["--ckpt-dir", f"{d}/ck"])
        check("train a tiny checkpoint", rc == 0, err[-500:] if rc else "")
        if rc:
            return

        def generate(*flags, prompt=" a b c"):
            # The text is raw token bytes (not always UTF-8): compare bytes, decode leniently.
            p = subprocess.run([T, "generate", "--ckpt", f"{d}/ck", "--tokenizer", TOKENIZER, "--prompt", prompt,
                                "--print-ids", *flags],
                               capture_output=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
            rc, out, err = p.returncode, p.stdout, p.stderr.decode(errors="replace")
            ids = {}
            for line in err.splitlines():
                for key in ("prompt ids:", "generated ids:"):
                    if line.startswith(key):
                        ids[key] = [int(x) for x in line[len(key):].split()]
            return rc, out, err, ids.get("prompt ids:"), ids.get("generated ids:")

        greedy = ["--temperature", "0", "--max-new-tokens", "20"]
        rc, out1, err, _, g1 = generate(*greedy)
        check("greedy generation runs", rc == 0 and g1 is not None, err[-500:] if rc else "")
        if rc or g1 is None:
            return
        _, out2, _, _, g2 = generate(*greedy)
        check("greedy is deterministic (same text and ids twice)", out1 == out2 and g1 == g2, f"{g1} vs {g2}")
        check("--max-new-tokens 20 yields 20 tokens", len(g1) == 20, str(g1))
        _, _, _, _, g7 = generate("--temperature", "0", "--max-new-tokens", "7")
        check("--max-new-tokens 7 yields 7 tokens, the first 7 of the 20", g7 == g1[:7], f"{g7} vs {g1[:7]}")

        sample = ["--temperature", "1", "--top-k", "0", "--max-new-tokens", "20"]
        _, _, _, _, s1 = generate(*sample, "--seed", "1")
        _, _, _, _, s1b = generate(*sample, "--seed", "1")
        _, _, _, _, s2 = generate(*sample, "--seed", "2")
        check("the same --seed reproduces a sample", s1 == s1b and s1 is not None, f"{s1} vs {s1b}")
        check("another --seed changes the sample", s1 != s2, f"{s1} vs {s2}")
        check("a sample differs from greedy (sampling happened)", s1 != g1, f"{s1}")
        _, _, _, _, k1 = generate("--temperature", "1", "--top-k", "1", "--seed", "3", "--max-new-tokens", "20")
        check("--top-k 1 equals greedy", k1 == g1, f"{k1} vs {g1}")

        # Past the position table: 100 new tokens on a 64-position model, all in the vocabulary.
        rc, _, err, _, long_ids = generate("--temperature", "1", "--top-k", "0", "--max-new-tokens", "100")
        check("generating past n_positions runs", rc == 0 and long_ids is not None and len(long_ids) == 100,
              err[-300:])
        check("every generated token is inside the model's vocabulary (no padding row)",
              long_ids is not None and all(0 <= t < VOCAB for t in long_ids), str(long_ids))
        # Cropping: prompts of > 64 tokens that differ only before their last 64 continue alike
        # (sampled with one seed: identical logits give identical draws); changing their last
        # token changes the continuation (so the comparison can fail).
        body = " a b" * 40
        seeded = ["--temperature", "1", "--top-k", "0", "--seed", "7", "--max-new-tokens", "20"]
        rc, _, err, pa, ga = generate(*seeded, prompt="c" + body)
        _, _, _, pb, gb = generate(*seeded, prompt="d" + body)
        _, _, _, pc, gc = generate(*seeded, prompt="c" + body + " c")
        check("long prompts tokenise beyond n_positions",
              rc == 0 and pa and pb and len(pa) > N_POSITIONS and pa[1:] == pb[1:] and pa[0] != pb[0],
              f"{pa} / {pb}; {err[-300:]}")
        check("only the last n_positions tokens decide the continuation", ga is not None and ga == gb,
              f"{ga} vs {gb}")
        check("a different last token changes the continuation", ga is not None and ga != gc, f"{ga} vs {gc}")

        # Vocabulary checks.
        rc, out, err, _, _ = generate(*greedy, prompt="Emma Woodhouse")
        check("a prompt token outside the model's vocabulary is refused",
              rc != 0 and "outside the model's vocabulary of 1000 tokens" in err and "'Em'" in err, err[-400:])
        rc, _, err = run([T, "train", "--model", "tiny", "--vocab-size", "50300", "--data", f"{d}/syn", "--steps", "1",
                          "--batch-size", "2", "--seq-len", "16", "--eval-every", "0", "--ckpt-dir", f"{d}/big"])
        check("train a model with a vocabulary larger than GPT-2's", rc == 0, err[-300:])
        rc, _, err = run([T, "generate", "--ckpt", f"{d}/big", "--tokenizer", TOKENIZER, "--prompt", " a"])
        check("a model larger than the tokenizer's vocabulary is refused",
              rc != 0 and "the model's vocabulary (50300) is larger than the tokenizer's (50257)" in err, err[-400:])


if __name__ == "__main__":
    main()
    finish()
