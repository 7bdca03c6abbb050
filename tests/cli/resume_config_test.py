"""`train --resume DIR` restores the run (issue 16): with no other flag it continues exactly as
saved (model, data, batch, sequence length, optimizer, schedule, evaluation, ckpt_dir,
metrics), bitwise; flags given with it override, each change printed; changes the weights
cannot follow (model shape, a sequence longer than the positions) are refused naming the
flag; a malformed trident.json is an error naming the file and the field, never a restart."""
import filecmp
import json
import os
import re
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import check, finish, mpirun, read_metrics, run, synthetic_tokens, trident, write_shard  # noqa: E402


def expect_refused(what, cmd, *fragments):
    rc, out, err = run(cmd)
    text = out + err
    missing = [f for f in fragments if f not in text]
    ok = rc != 0 and not missing and not re.search(r"resumed from \S+ at step", text)
    check(what, ok, "" if ok else f"rc={rc}, missing {missing}: {text.strip()[-700:]}")


def main():
    build = sys.argv[1]
    T = trident(build)
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(20000, 1000, 21))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(4000, 1000, 22))
        # Nothing at its default, so a fallback to any default shows.
        opts = ["--model", "tiny", "--n-layer", "3", "--data", f"{d}/syn", "--batch-size", "6", "--seq-len", "24",
                "--steps", "12", "--lr", "2e-3", "--min-lr", "1e-4", "--warmup-steps", "3", "--weight-decay", "0.05",
                "--beta2", "0.99", "--grad-clip", "0.5", "--eval-every", "6", "--eval-batches", "2", "--seed", "9",
                "--ckpt-every", "6", "--data-order", "sequential"]
        rc, _, err = run([T, "train", *opts, "--ckpt-dir", f"{d}/a", "--metrics", f"{d}/a.jsonl"])
        check("uninterrupted run", rc == 0, err[-1500:] if rc else "")
        rc, _, err = run([T, "train", *opts, "--ckpt-dir", f"{d}/b", "--metrics", f"{d}/b.jsonl", "--stop-after", "6"])
        check("run stopped after 6 steps", rc == 0, err[-1500:] if rc else "")
        if rc:
            return

        # ---- --resume alone continues exactly.
        rc, _, err = run([T, "train", "--resume", f"{d}/b"])
        check("--resume DIR alone", rc == 0, err[-1500:] if rc else "")
        if rc:
            return
        ok = "run configuration from the checkpoint" in err and f"ckpt_dir {d}/b" in err
        check("it says the configuration comes from the checkpoint", ok, "" if ok else err[-800:])
        a, b = read_metrics(f"{d}/a.jsonl"), read_metrics(f"{d}/b.jsonl")
        check("the metrics file is restored and appended to", [m["step"] for m in b] == list(range(1, 13)),
              str([m["step"] for m in b]))
        for key in ["loss", "grad_norm", "lr", "val_loss"]:
            same = [x.get(key) for x in a] == [y.get(key) for y in b]
            check(f"{key} bitwise identical to the uninterrupted run", same,
                  "" if same else f"{[x.get(key) for x in a]} vs {[y.get(key) for y in b]}")
        same = os.path.exists(f"{d}/b/step_00000012") and all(
            filecmp.cmp(f"{d}/a/step_00000012/{f}", f"{d}/b/step_00000012/{f}", shallow=False)
            for f in ["model.safetensors", "optimizer.safetensors"])
        check("the final checkpoint goes to the restored ckpt_dir, bitwise equal", same)

        # ---- Overrides, each printed.
        rc, _, err = run([T, "train", "--resume", f"{d}/b", "--steps", "14", "--eval-every", "0"])
        ok = rc == 0 and "resume: --steps 12 -> 14" in err and "resume: --eval-every 6 -> 0" in err
        check("--steps and --eval-every override, each change printed", ok, "" if ok else err[-800:])
        check("the overridden run went on to step 14", open(f"{d}/b/latest").read().strip() == "step_00000014")
        rc, _, err = run([mpirun(), "-n", "2", T, "train", "--resume", f"{d}/b", "--steps", "16"])
        ok = rc != 0 and "dp 1 x tp 1 x pp 1 (1 ranks" in err and "this launch has 2 ranks" in err
        check("2 ranks without a matching layout are refused (the saved layout is dp 1)", ok, "" if ok else err[-600:])
        rc, _, err = run([mpirun(), "-n", "2", T, "train", "--resume", f"{d}/b", "--steps", "16", "--dp", "2",
                          "--metrics", f"{d}/b2.jsonl"])
        ok = rc == 0 and "resume: --dp 1 -> 2" in err and "resume: --metrics" in err
        check("a layout change (2 ranks, --dp 2) is honoured and printed", ok, "" if ok else err[-800:])
        if ok:
            check("the new metrics file holds the new steps", [m["step"] for m in read_metrics(f"{d}/b2.jsonl")] == [15, 16])

        # ---- Changes that cannot be honoured.
        expect_refused("a changed layer count is refused naming the flag",
                       [T, "train", "--resume", f"{d}/b", "--steps", "20", "--n-layer", "4"],
                       "--n-layer 3 -> 4 cannot be honoured", "n_layer")
        expect_refused("another preset is refused naming --model",
                       [T, "train", "--resume", f"{d}/b", "--steps", "20", "--model", "small"], "--model tiny -> small")
        expect_refused("a sequence longer than the positions is refused naming --seq-len",
                       [T, "train", "--resume", f"{d}/b", "--steps", "20", "--seq-len", "100"],
                       "--seq-len 100 cannot be honoured", "n_positions 64")

        # ---- Malformed trident.json: errors naming the file and the field.
        good = f"{d}/b/step_00000006"

        def corrupt(name, edit):
            dst = f"{d}/{name}/step_00000006"
            shutil.copytree(good, dst)
            path = f"{dst}/trident.json"
            with open(path) as f:
                text = f.read()
            with open(path, "w") as f:
                f.write(edit(text))
            return dst, path

        def with_json(change):
            def edit(text):
                j = json.loads(text)
                change(j)
                return json.dumps(j)
            return edit

        cases = [
            ("not JSON", lambda t: t[:len(t) // 2], ["not valid JSON"]),
            ("a string step", with_json(lambda j: j.update(step="six")), ["'step'", "the string 'six'"]),
            ("a negative step", with_json(lambda j: j.update(step=-6)), ["'step'", "non-negative", "-6"]),
            ("a step that disagrees with the directory", with_json(lambda j: j.update(step=5)),
             ["'step'", "is 5 but the directory is step_00000006"]),
            ("a wrong-typed run_config field", with_json(lambda j: j["run_config"]["optim"].update(lr="fast")),
             ["'run_config'", "'lr'", "fast"]),
            ("an unknown run_config field", with_json(lambda j: j["run_config"]["optim"].update(lerning_rate=1)),
             ["'run_config'", "lerning_rate"]),
            ("no run_config", with_json(lambda j: j.pop("run_config")), ["no 'run_config'"]),
        ]
        for i, (what, edit, fragments) in enumerate(cases):
            dst, path = corrupt(f"bad{i}", edit)
            expect_refused(f"trident.json with {what} is an error naming the file and field",
                           [T, "train", "--resume", dst, "--steps", "20"], path, *fragments)
        dst, path = corrupt("bad_missing", lambda t: t)
        os.remove(path)
        expect_refused("a checkpoint without trident.json cannot be resumed",
                       [T, "train", "--resume", dst, "--steps", "20"], "trident.json", "--init-from")


if __name__ == "__main__":
    main()
    finish()
