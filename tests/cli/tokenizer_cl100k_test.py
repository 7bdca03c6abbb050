"""cl100k_base in Trident gives the ids of the npm package js-tiktoken's own encoder (issue 12):
`trident prepare --tokenizer cl100k` on a corpus of tricky strings (contractions in every
case, digit runs, CRLF and trailing white space, tabs before words, punctuation runs,
non-Latin scripts, emoji, combining marks) and on all of Jane Austen, each compared id for id
with js-tiktoken (node, tests/cli/js_tiktoken_encode.cjs). The shards are 32-bit (100,277 ids)
and every document starts with <|endoftext|> (100257).

Not compared: U+0085 and U+FEFF, where JavaScript's \\s differs from the Unicode White_Space
that tiktoken's Rust regex (and Trident) use."""
import base64
import json
import os
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import REPO, check, finish, run, trident  # noqa: E402

ASSETS = os.path.join(REPO, "data", "assets")
EOT = 100257
TRICKY = [
    "Hello world", "I'm sure you'll see it's fine, they've said we'd go.", "I'M SURE YOU'LL SEE IT'S",
    "She'S 'Re 'rE 'LL 'lL 'D 'd", "'s 's's''s", "1234567890 12 1 123 1234", "x1y22z333w4444",
    "line one\r\nline two\n\n\nthree\r\r\n", "trailing spaces   ", "   leading", "a  b   c    d",
    "\tTabbed\twords\t\t\there", "tab\t\n\t\nend", "!!! ??? ... --- ;;; ::: (a) [b] {c}", "(parenthesised) \"quoted\"",
    "email@example.com https://example.com/path?q=1&r=2#frag", "C'est déjà l'été à Paris.",
    "Ångström naïve façade coöperate", "Привет, мир! Как дела?", "こんにちは世界。東京タワー", "中文测试，标点符号。",
    "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "😀😃😄 emoji 🎉🎊 👨‍👩‍👧‍👦 flags 🇫🇷🇩🇪",
    "e\u0301 combining a\u0308 marks", "zero\u200bwidth\u200djoiner", "\u00a0non-breaking\u2003em\u3000ideographic",
    "mixed123abc456DEF", "    \n    indented code\n\tdef f(x):\n\t\treturn x**2\n", "<|endoftext|> is plain text",
    "", " ", "\n", "a", "  \n  \n", "Ⅻ roman numeral ½ fractions ²³ superscripts", "ΑΒΓ αβγ Ωμέγα",
]


def load_ranks(path):
    """id -> bytes from js-tiktoken's module (for decoding Trident's shard independently)."""
    text = open(path, encoding="utf-8").read()
    obj = json.loads(text[text.index("{"):text.rindex("}") + 1])
    out = {}
    for line in obj["bpe_ranks"].split("\n"):
        if not line:
            continue
        fields = line.split(" ")
        rank = int(fields[1])
        for i, tok in enumerate(fields[2:]):
            out[rank + i] = base64.b64decode(tok)
    for name, id_ in obj["special_tokens"].items():
        out[id_] = name.encode()
    return out


def read_shard(path):
    raw = open(path, "rb").read()
    magic, version, count = struct.unpack("<3i", raw[:12])
    return magic, version, list(struct.unpack(f"<{count}I", raw[1024:1024 + 4 * count]))


def split_documents(ids):
    docs = []
    for t in ids:
        if t == EOT:
            docs.append([])
        else:
            docs[-1].append(t)
    return docs


def js_encode(d, texts):
    with open(f"{d}/texts.json", "w", encoding="utf-8") as f:
        json.dump(texts, f, ensure_ascii=False)
    env = dict(os.environ, NODE_PATH=os.path.join(ASSETS, "npm", "node_modules"))
    p = subprocess.run(["node", os.path.join(REPO, "tests", "cli", "js_tiktoken_encode.cjs"), f"{d}/texts.json"],
                       capture_output=True, text=True, env=env, timeout=300)
    check("js-tiktoken reference encoder runs", p.returncode == 0, p.stderr[-500:])
    return json.loads(p.stdout) if p.returncode == 0 else None


def first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b)) if len(a) != len(b) else -1


def main():
    T = trident(os.path.abspath(sys.argv[1]))
    os.chdir(REPO)  # the named tokenizer and corpus are found under ./data/assets, as for a user
    ranks = load_ranks(os.path.join(ASSETS, "cl100k", "cl100k_base.js"))
    with tempfile.TemporaryDirectory() as d:
        inputs = []
        for i, s in enumerate(TRICKY):
            inputs.append(f"{d}/doc{i:03d}.txt")
            with open(inputs[-1], "w", encoding="utf-8", newline="") as f:
                f.write(s)
        rc, out, err = run([T, "prepare", "--tokenizer", "cl100k", "--input", *inputs, "--out", f"{d}/tricky",
                            "--val-fraction", "0", "--quiet"])
        check("prepare --tokenizer cl100k on the tricky strings", rc == 0, err[-800:])
        if rc == 0:
            magic, version, ids = read_shard(f"{d}/tricky_train.bin")
            check("a 32-bit shard (llm.c's magic 20240801, version 7)", (magic, version) == (20240801, 7),
                  f"{magic}, {version}")
            meta = json.load(open(f"{d}/tricky_meta.json"))
            check("meta names the tokenizer and its vocabulary", meta["tokenizer"] == "cl100k" and
                  meta["vocab_size"] == 100277 and meta["document_separator"] == EOT, str(meta)[:300])
            docs = split_documents(ids)
            expected = js_encode(d, TRICKY)
            if expected is not None:
                bad = [(TRICKY[i], docs[i], expected[i]) for i in range(len(TRICKY))
                       if i >= len(docs) or docs[i] != expected[i]]
                check(f"{len(TRICKY)} tricky strings: ids equal js-tiktoken's", len(docs) == len(TRICKY) and not bad,
                      f"{len(bad)} differ, first: {bad[:1]}")
            check("decoding the shard gives the inputs back",
                  [b"".join(ranks[t] for t in doc).decode("utf-8") for doc in docs] == TRICKY)

        # All of Jane Austen, decoded from Trident's shards and re-encoded by js-tiktoken.
        rc, out, err = run([T, "prepare", "--tokenizer", "cl100k", "--corpus", "janeausten", "--out", f"{d}/ja",
                            "--quiet"], timeout=600)
        check("prepare --tokenizer cl100k --corpus janeausten", rc == 0, err[-800:])
        if rc == 0:
            docs = split_documents(read_shard(f"{d}/ja_train.bin")[2]) + split_documents(read_shard(f"{d}/ja_val.bin")[2])
            texts = [b"".join(ranks[t] for t in doc).decode("utf-8") for doc in docs]
            expected = js_encode(d, texts)
            if expected is not None:
                n_tokens = sum(len(x) for x in docs)
                diffs = [(i, first_difference(a, b)) for i, (a, b) in enumerate(zip(docs, expected)) if a != b]
                detail = f"{len(docs)} novels, {n_tokens} tokens, {sum(len(t) for t in texts)} characters"
                if diffs:
                    i, k = diffs[0]
                    detail += f"; novel {i} differs at token {k}: trident {docs[i][k:k + 8]} js {expected[i][k:k + 8]}"
                check("Jane Austen: ids equal js-tiktoken's", len(docs) == 6 and not diffs, detail)
            # The 32-bit shards train a model with cl100k's vocabulary; the first loss is about
            # ln(100277) = 11.5 for near-uniform initial logits.
            rc, out, err = run([T, "train", "--model", "tiny", "--vocab-size", "100277", "--data", f"{d}/ja",
                                "--steps", "2", "--batch-size", "2", "--seq-len", "16", "--eval-every", "0",
                                "--metrics", f"{d}/m.jsonl", "--ckpt-dir", f"{d}/ck"])
            losses = [json.loads(x)["loss"] for x in open(f"{d}/m.jsonl")] if rc == 0 else []
            check("train on cl100k shards with --vocab-size 100277", rc == 0 and len(losses) == 2 and
                  abs(losses[0] - 11.5158) < 0.1, err[-500:] if rc else str(losses))
            # generate with the cl100k model: the prompt encodes as js-tiktoken does, every sampled
            # id lies in the model's vocabulary; the GPT-2 tokenizer is refused for it.
            prompt = "It is a truth universally acknowledged"
            rc, out, err = run([T, "generate", "--ckpt", f"{d}/ck", "--tokenizer", "cl100k", "--prompt", prompt,
                                "--max-new-tokens", "8", "--seed", "3", "--print-ids"])
            ids = {}
            for line in err.splitlines():
                if line.startswith(("prompt ids:", "generated ids:")):
                    key, _, vals = line.partition(":")
                    ids[key] = [int(x) for x in vals.split()]
            want = js_encode(d, [prompt])
            check("generate --tokenizer cl100k", rc == 0 and want is not None and ids.get("prompt ids") == want[0]
                  and len(ids.get("generated ids", [])) == 8 and all(0 <= t < 100277 for t in ids["generated ids"]),
                  err[-500:] if rc else str(ids))
            # Without --tokenizer the checkpoint's recorded one (config.json trident_tokenizer) is used.
            rc, out, err = run([T, "generate", "--ckpt", f"{d}/ck", "--prompt", prompt, "--max-new-tokens", "2",
                                "--print-ids"])
            check("generate without --tokenizer uses the checkpoint's cl100k",
                  rc == 0 and want is not None and f"prompt ids: {' '.join(map(str, want[0]))}" in err, err[-300:])
            rc, out, err = run([T, "generate", "--ckpt", f"{d}/ck", "--tokenizer", "gpt2", "--prompt", prompt])
            check("generate refuses the GPT-2 tokenizer for a cl100k model", rc != 0 and "--tokenizer" in err,
                  err[-300:])
            rc, out, err = run([T, "train", "--model", "tiny", "--data", f"{d}/ja", "--steps", "1", "--batch-size", "2",
                                "--seq-len", "16", "--eval-every", "0"])
            check("a model vocabulary too small for the shards is refused", rc != 0 and "100257" in err and
                  "another tokenizer" in err, err[-300:])


if __name__ == "__main__":
    main()
    finish()
