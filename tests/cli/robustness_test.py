"""Hostile-user robustness (issue 16): poisoned steps are skipped on every rank and never reach a
checkpoint; `ckpt info` validates a checkpoint completely (finiteness, truncation, missing
tensors, bad trident.json) and exits non-zero naming the problem; `generate` refuses non-finite
weights and prompts outside the vocabulary; sizes that cannot be built are refused before
anything is allocated."""
import json
import math
import os
import shutil
import struct
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import check, finish, mpirun, read_metrics, run, synthetic_tokens, trident, write_shard  # noqa: E402
import safetensors_stdlib  # noqa: E402


def crashed(text):
    return any(s in text for s in ("terminate called", "Segmentation", "core dumped", "Aborted", "bad_alloc"))


def expect_error(what, cmd, *fragments, timeout=120):
    rc, out, err = run(cmd, timeout=timeout)
    text = out + err
    ok = rc != 0 and not crashed(text) and all(f in text for f in fragments)
    check(what, ok, f"rc={rc}; missing {[f for f in fragments if f not in text]}; output: {text.strip()[-700:]}"
          if not ok else text.strip().splitlines()[-1][:240])
    return text


def nonfinite_tensors(path):
    """Names of the tensors of a safetensors file that hold a NaN or inf."""
    return [name for name, a in safetensors_stdlib.load(path).items() if not all(math.isfinite(x) for x in a)]


def check_all_checkpoints_finite(what, root):
    steps = sorted(n for n in os.listdir(root) if n.startswith("step_"))
    bad = []
    for s in steps:
        for f in ("model.safetensors", "optimizer.safetensors"):
            bad += [f"{s}/{f}:{n}" for n in nonfinite_tensors(f"{root}/{s}/{f}")]
    check(f"{what}: {len(steps)} checkpoints, none holds a NaN or inf", steps and not bad, str(bad[:5]))
    return steps


def poisoned_steps(T, d):
    # lr 1000 blows the tiny model up within a few steps: the loss grows to ~1e15, then the
    # gradient norm is NaN. Without the skip, that step's update wrote NaN weights into the
    # checkpoint of that step.
    base = ["train", "--model", "tiny", "--data", f"{d}/syn", "--batch-size", "4", "--seq-len", "32",
            "--steps", "30", "--lr", "1000", "--eval-every", "0", "--ckpt-every", "1", "--max-bad-steps", "3"]
    for name, launcher, extra in [("1 rank", [T], []),
                                  ("dp 2 zero 1", [mpirun(), "-n", "2", T], ["--dp", "2", "--zero", "1"]),
                                  ("pp 2", [mpirun(), "-n", "2", T], ["--pp", "2"])]:
        root, metrics = f"{d}/lr1000_{len(extra)}_{extra[-1] if extra else 0}", f"{d}/m_{len(extra)}.jsonl"
        text = expect_error(f"lr 1000 ({name}) stops after 3 non-finite steps in a row",
                            launcher + base + extra + ["--ckpt-dir", root, "--metrics", metrics],
                            "3 non-finite steps in a row (--max-bad-steps 3)", "without writing a checkpoint")
        lines = [ln for ln in text.splitlines() if ln.startswith("skipped step")]
        m = read_metrics(metrics)
        skipped = [x["step"] for x in m if x["skipped"]]
        check(f"lr 1000 ({name}): metrics mark the skipped steps, the last 3 in a row",
              len(skipped) >= 3 and skipped[-3:] == [m[-1]["step"] - 2, m[-1]["step"] - 1, m[-1]["step"]]
              and all(x["skipped"] is False for x in m if x["step"] not in skipped), str(skipped))
        check(f"lr 1000 ({name}): one stderr line per skipped step but the last (which stops the run)",
              len(lines) == len(skipped) - 1 and all("loss" in ln and "grad norm" in ln for ln in lines),
              f"{len(lines)} lines for {len(skipped)} skipped steps")
        steps = check_all_checkpoints_finite(f"lr 1000 ({name})", root)
        latest = open(f"{root}/latest").read().strip()
        check(f"lr 1000 ({name}): latest names the last checkpoint written, before the stop",
              steps and latest == steps[-1] and int(latest[5:]) < m[-1]["step"], f"{latest} of {steps}")
        rc, out, err = run([T, "ckpt", "info", root])
        ok = rc == 0 and "all finite" in out
        check(f"lr 1000 ({name}): ckpt info of the run directory succeeds", ok, "" if ok else (out + err)[-500:])
    expect_error("--on-nonfinite stop ends the run at the first non-finite step",
                 [T] + base + ["--on-nonfinite", "stop", "--ckpt-dir", f"{d}/stop"],
                 "--on-nonfinite stop ends the run here")
    check_all_checkpoints_finite("--on-nonfinite stop", f"{d}/stop")


def read_raw(path):
    """(header dict, data bytes) of a safetensors file."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def write_raw(path, header, data):
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


def poke_nan(path, tensor, element=3):
    header, data = read_raw(path)
    begin = header[tensor]["data_offsets"][0] + 4 * element
    data = data[:begin] + struct.pack("<f", float("nan")) + data[begin + 4:]
    write_raw(path, header, data)


def drop_tensor(path, tensor):
    header, data = read_raw(path)
    out, new_header = b"", {}
    for name, e in header.items():
        if name == "__metadata__" or name == tensor:
            if name == "__metadata__":
                new_header[name] = e
            continue
        b, end = e["data_offsets"]
        new_header[name] = dict(e, data_offsets=[len(out), len(out) + end - b])
        out += data[b:end]
    write_raw(path, new_header, out)


def ckpt_info_checks(T, d):
    # A good checkpoint to damage, one way per copy.
    base = [T, "train", "--model", "tiny", "--data", f"{d}/syn", "--batch-size", "4", "--seq-len", "32",
            "--steps", "2", "--eval-every", "0", "--ckpt-dir", f"{d}/good"]
    rc, _, err = run(base)
    check("a good 2-step checkpoint", rc == 0, err[-800:] if rc else "")
    if rc:
        return
    good = f"{d}/good/step_00000002"
    rc, out, err = run([T, "ckpt", "info", f"{d}/good"])
    ok = rc == 0 and "verified: 100 model tensors" in out and "all finite" in out
    check("ckpt info of a good checkpoint: exit 0, verified, all finite", ok, "" if ok else (out + err)[-600:])

    def damaged(name, damage):
        path = f"{d}/bad_{name}/step_00000002"  # a step directory's name, as training writes it
        shutil.copytree(good, path)
        damage(path)
        return path

    def trident_json(path, edit):
        with open(f"{path}/trident.json") as f:
            j = json.load(f)
        edit(j)
        with open(f"{path}/trident.json", "w") as f:
            json.dump(j, f)

    def truncate(path, keep):
        with open(path, "rb") as f:
            blob = f.read()
        with open(path, "wb") as f:
            f.write(blob[:keep(len(blob))])

    cases = [
        ("NaN in a weight", lambda p: poke_nan(f"{p}/model.safetensors", "h.1.mlp.c_fc.weight"),
         ["h.1.mlp.c_fc.weight", "model.safetensors", "nan at element 3"]),
        ("NaN in a moment", lambda p: poke_nan(f"{p}/optimizer.safetensors", "ln_f.bias.exp_avg_sq", 0),
         ["ln_f.bias.exp_avg_sq", "optimizer.safetensors", "not finite"]),
        ("truncated model.safetensors", lambda p: truncate(f"{p}/model.safetensors", lambda n: n - 100),
         ["model.safetensors", "corrupt"]),
        ("model.safetensors cut inside its header", lambda p: truncate(f"{p}/model.safetensors", lambda n: 20),
         ["model.safetensors"]),
        ("missing weight", lambda p: drop_tensor(f"{p}/model.safetensors", "h.0.attn.c_proj.bias"),
         ["h.0.attn.c_proj.bias", "missing"]),
        ("missing moment", lambda p: drop_tensor(f"{p}/optimizer.safetensors", "wpe.weight.exp_avg"),
         ["wpe.weight.exp_avg", "optimizer"]),
        ("trident.json not JSON", lambda p: open(f"{p}/trident.json", "w").write("{\"step\": 2,"),
         ["trident.json", "not valid JSON"]),
        ("trident.json step not an integer", lambda p: trident_json(p, lambda j: j.update(step="two")),
         ["trident.json", "'step'", "\"two\""]),
        ("trident.json step missing", lambda p: trident_json(p, lambda j: j.pop("step")),
         ["trident.json", "'step' is missing"]),
        ("trident.json step not the directory's", lambda p: trident_json(p, lambda j: j.update(step=7)),
         ["trident.json", "step_00000002"]),
        ("trident.json run_config with an unknown key",
         lambda p: trident_json(p, lambda j: j["run_config"]["optim"].update(lerning_rate=1)),
         ["trident.json", "run_config", "lerning_rate"]),
        ("config.json disagrees with the tensors",
         lambda p: open(f"{p}/config.json", "w").write(open(f"{good}/config.json").read().replace(
             '"n_layer": 8', '"n_layer": 9')), ["n_layer", "h.8."]),
        ("optimizer step metadata not an integer",
         lambda p: (lambda h, data: write_raw(f"{p}/optimizer.safetensors",
                                             dict(h, __metadata__=dict(h["__metadata__"], step="x")), data))(
             *read_raw(f"{p}/optimizer.safetensors")), ["optimizer", "step", "\"x\""]),
        ("optimizer step beyond the run's",
         lambda p: (lambda h, data: write_raw(f"{p}/optimizer.safetensors",
                                             dict(h, __metadata__=dict(h["__metadata__"], step="9")), data))(
             *read_raw(f"{p}/optimizer.safetensors")), ["AdamW step 9", "beyond the run's step 2"]),
    ]
    for name, damage, fragments in cases:
        path = damaged(name.replace(" ", "_").replace("'", ""), damage)
        expect_error(f"ckpt info refuses: {name}", [T, "ckpt", "info", path], *fragments)
    # Training does not start from one either (the NaN would make every step a skipped one).
    # Trident's own checkpoints record crc32c checksums, so a poked value is refused as corrupt
    # before its value is read; the finiteness check is what guards a checkpoint without them
    # (another tool's, or one whose record was dropped), which these runs then exercise.
    # --init-from takes the checkpoint's model: a shape flag that would change it is refused (it
    # was silently dropped), one restating it is not.
    expect_error("--init-from with --n-layer 2 (the checkpoint has 8) is refused",
                 base[:-2] + ["--init-from", good, "--n-layer", "2"],
                 "cannot be honoured with --init-from", "n_layer 8 but the model has 2")
    rc, _, err = run(base[:-2] + ["--init-from", good, "--n-layer", "8", "--steps", "3"])
    check("--init-from with --n-layer 8, the checkpoint's own, trains", rc == 0, err[-500:] if rc else "")
    path = f"{d}/bad_NaN_in_a_weight/step_00000002"
    expect_error("a poked weight in a checkpoint with checksums is refused as corrupt",
                 base[:-2] + ["--init-from", path], "model.safetensors is corrupt", "checksum")
    # Under mpirun rank 0 alone reads the files for their checksums; every rank stops with it.
    # Every rank throws rank 0's message, so whichever rank ends the job first names the file (a
    # "see rank 0's error" on rank 1 once won that race and killed rank 0 before it printed).
    expect_error("at dp 2 too, every rank refusing it with the file's name",
                 [mpirun(), "-n", "2"] + base[:-2] + ["--dp", "2", "--init-from", path],
                 "model.safetensors is corrupt", "checksum")
    for bad in ("bad_NaN_in_a_weight", "bad_NaN_in_a_moment"):
        trident_json(f"{d}/{bad}/step_00000002", lambda j: j.pop("checksums"))
    expect_error("train --init-from a checkpoint with a NaN weight is refused",
                 base[:-2] + ["--init-from", path], "h.1.mlp.c_fc.weight", "not finite")
    expect_error("train --resume a checkpoint with a NaN moment is refused",
                 base[:-2] + ["--steps", "4", "--resume", f"{d}/bad_NaN_in_a_moment/step_00000002"],
                 "ln_f.bias.exp_avg_sq", "not finite")


def generate_checks(T, d):
    # tiny's vocabulary is 1000 GPT-2 ids; "Emma" starts with "Em" (id 10161).
    from harness import REPO
    gen = [T, "generate", "--tokenizer", f"{REPO}/data/assets/gpt2", "--max-new-tokens", "3", "--temperature", "0"]
    rc, out, err = run(gen + ["--ckpt", f"{d}/good", "--prompt", " a, a."])
    check("generate from the tiny model with a prompt inside its vocabulary", rc == 0 and out.startswith(" a, a."),
          "" if rc == 0 else err[-400:])
    text = expect_error("generate refuses a prompt token outside the model's vocabulary",
                        gen + ["--ckpt", f"{d}/good", "--prompt", "Emma walked"],
                        "outside the model's vocabulary of 1000 tokens", "GPT-2 id 10161")
    check("generate printed nothing of the refused prompt", "walked" not in text.split("error:")[0])
    expect_error("generate refuses an empty prompt when the vocabulary has no <|endoftext|>",
                 gen + ["--ckpt", f"{d}/good", "--prompt", ""], "prompt is empty", "<|endoftext|>")
    expect_error("generate refuses non-finite weights",
                 gen + ["--ckpt", f"{d}/bad_NaN_in_a_weight/step_00000002"], "h.1.mlp.c_fc.weight", "not finite")


def size_checks(T, d):
    import time
    train = [T, "train", "--data", f"{d}/syn", "--steps", "1", "--eval-every", "0"]

    def quick_error(what, cmd, *fragments, limit=30):
        t0 = time.monotonic()
        expect_error(what, cmd, *fragments, timeout=limit * 4)
        took = time.monotonic() - t0
        check(f"{what}: refused within {limit} s", took < limit, f"{took:.1f} s")

    # 100000 layers of tiny at batch 64 x 64: ~1.3G parameters and ~1 TiB of activations.
    quick_error("--n-layer 100000 is refused before building, with the planner's estimate",
                train + ["--model", "tiny", "--n-layer", "100000", "--batch-size", "64", "--seq-len", "64"],
                "trident plan's memory model", "is available", "activations")
    big = dict(model_type="gpt2", n_layer=1000000000, n_head=4, n_embd=32, n_positions=64, vocab_size=1000)
    with open(f"{d}/big.json", "w") as f:
        json.dump(big, f)
    quick_error("config.json with n_layer 1e9 is refused before building",
                train + ["--model", f"{d}/big.json"], "cannot be built here", "12704000034112 parameters")
    quick_error("plan of a config.json with n_layer 1e9 is refused", [T, "plan", "--model", f"{d}/big.json",
                                                                        "--world", "1"], "cannot plan")
    with open(f"{d}/huge.json", "w") as f:
        json.dump(dict(big, n_layer=10 ** 12), f)
    quick_error("config.json with n_layer 1e12 (beyond 32 bits) is refused", train + ["--model", f"{d}/huge.json"],
                "n_layer", "out of range")
    quick_error("a parameter count beyond 64 bits is an error, not a wrapped number",
                train + ["--model", "tiny", "--n-layer", "2147483647", "--n-embd", "536870908"], "2^63")
    # A checkpoint whose config.json claims 1e9 layers: every reader refuses it at once.
    shutil.copytree(f"{d}/good/step_00000002", f"{d}/bigck")
    shutil.copy(f"{d}/big.json", f"{d}/bigck/config.json")
    for name, cmd in [("ckpt info", [T, "ckpt", "info", f"{d}/bigck"]),
                      ("generate", [T, "generate", "--ckpt", f"{d}/bigck"]),
                      ("train --init-from", train + ["--init-from", f"{d}/bigck"])]:
        quick_error(f"{name} of a checkpoint whose config.json says n_layer 1e9", cmd,
                    "config.json implies 12000000004 tensors")


def main():
    build = sys.argv[1]
    T = trident(build)
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(20000, 1000, 1))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(4000, 1000, 2))
        poisoned_steps(T, d)
        ckpt_info_checks(T, d)
        generate_checks(T, d)
        size_checks(T, d)
    finish()


if __name__ == "__main__":
    main()
