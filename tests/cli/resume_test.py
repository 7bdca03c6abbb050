"""Exact resume: 2N steps in one go and N steps (--stop-after) + resume + N steps give bitwise-identical
losses, grad norms and weights (issue 4). Also checks --init-from and that the written
checkpoint is complete (latest, config.json, optimizer state)."""
import filecmp
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import check, finish, read_metrics, run, synthetic_tokens, trident, write_shard  # noqa: E402


def main():
    build = sys.argv[1]
    T = trident(build)
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(20000, 1000, 1))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(4000, 1000, 2))
        common = [T, "train", "--model", "tiny", "--data", f"{d}/syn", "--batch-size", "4",
                  "--seq-len", "32", "--steps", "8", "--lr", "3e-3", "--warmup-steps", "2",
                  "--eval-every", "4", "--eval-batches", "2", "--seed", "7"]
        rc, _, err = run(common + ["--ckpt-dir", f"{d}/a", "--ckpt-every", "4", "--metrics", f"{d}/a.jsonl"])
        check("uninterrupted 8-step run", rc == 0, err[-2000:] if rc else "")
        if rc:
            return
        check("latest names the final step", open(f"{d}/a/latest").read().strip() == "step_00000008")
        for f in ["model.safetensors", "optimizer.safetensors", "config.json", "trident.json"]:
            check(f"checkpoint holds {f}", os.path.exists(f"{d}/a/step_00000004/{f}"))
        # A run that stops after 4 steps (same LR schedule, which spans --steps 8), then resumes.
        rc, _, err = run(common + ["--ckpt-dir", f"{d}/b", "--stop-after", "4"])
        check("run stopped after 4 steps", rc == 0 and open(f"{d}/b/latest").read().strip() == "step_00000004",
              err[-2000:] if rc else "")
        if rc:
            return
        rc, _, err = run(common + ["--ckpt-dir", f"{d}/b", "--resume", f"{d}/b", "--metrics", f"{d}/b.jsonl"])
        check("resumed run", rc == 0, err[-2000:] if rc else "")
        if rc:
            return
        a = read_metrics(f"{d}/a.jsonl")[4:]
        b = read_metrics(f"{d}/b.jsonl")
        check("resumed run continues at step 5", [m["step"] for m in b] == [5, 6, 7, 8], str([m["step"] for m in b]))
        for key in ["loss", "grad_norm", "lr"]:
            same = [x[key] for x in a] == [y[key] for y in b]
            check(f"{key} bitwise identical after resume", same,
                  f"{[x[key] for x in a]} vs {[y[key] for y in b]}")
        check("val_loss identical after resume", a[-1].get("val_loss") == b[-1].get("val_loss"))
        for f in ["model.safetensors", "optimizer.safetensors"]:
            check(f"final {f} bitwise identical", filecmp.cmp(f"{d}/a/step_00000008/{f}",
                                                              f"{d}/b/step_00000008/{f}", shallow=False))
        # A resumed run may leave out --data: the checkpoint's run configuration names it.
        rc, _, err = run([T, "train", "--model", "tiny", "--batch-size", "4", "--seq-len", "32", "--steps", "10",
                          "--eval-every", "0", "--resume", f"{d}/b", "--ckpt-dir", f"{d}/b"])
        check("resume without --data reads the shards named in the checkpoint",
              rc == 0 and "run configuration from the checkpoint" in err and f"data {d}/syn," in err, err[-800:])
        # --init-from takes the weights only. With a negligible learning rate (Adam moves each
        # weight by ~lr = 1e-12) the validation loss after one step equals the checkpoint's.
        rc, _, err = run([T, "train", "--init-from", f"{d}/a/step_00000008", "--data", f"{d}/syn",
                          "--batch-size", "4", "--seq-len", "32", "--steps", "1", "--lr", "1e-12",
                          "--eval-every", "1", "--eval-batches", "2", "--metrics", f"{d}/c.jsonl"])
        check("--init-from a checkpoint", rc == 0, err[-2000:] if rc else "")
        if rc == 0:
            val = read_metrics(f"{d}/c.jsonl")[0]["val_loss"]
            want = a[-1]["val_loss"]
            check("--init-from starts from the trained weights", abs(val - want) < 1e-6,
                  f"val_loss {val:.7f} vs the checkpoint's {want:.7f}")


if __name__ == "__main__":
    main()
    finish()
