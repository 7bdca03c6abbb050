"""With --pp > 1, `trident train` reports the pipeline's measured bubble: pipeline_idle in every
metrics line, the mean beside the schedule's theoretical bubble at the end, the last step's
timeline as ASCII, and --pipeline-timeline FILE as an SVG chart. Without a pipeline,
--pipeline-timeline is refused before training. --balance-stages splits the layers by cost."""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import check, finish, mpirun, read_metrics, run, synthetic_tokens, trident, write_shard  # noqa: E402


def main():
    T = trident(sys.argv[1])
    with tempfile.TemporaryDirectory() as d:
        tokens = synthetic_tokens(5000, 1000, 5)
        write_shard(f"{d}/s_train.bin", tokens)
        write_shard(f"{d}/s_val.bin", tokens[:2000])
        base = [T, "train", "--model", "tiny", "--data", f"{d}/s", "--batch-size", "8", "--seq-len", "16",
                "--steps", "3", "--eval-every", "0"]
        svg = f"{d}/out/timeline.svg"
        rc, out, err = run([mpirun(), "-n", "2"] + base +
                           ["--pp", "2", "--schedule", "gpipe", "--micro-batches", "4",
                            "--metrics", f"{d}/m.jsonl", "--pipeline-timeline", svg])
        check("pp 2 run succeeds", rc == 0, err[-800:])
        if rc == 0:
            rows = read_metrics(f"{d}/m.jsonl")
            idle = [r.get("pipeline_idle") for r in rows]
            # Rank 1 cannot start before rank 0's first forward, so a pipeline always idles.
            check("every metrics line has pipeline_idle in (0, 1)",
                  len(rows) == 3 and all(isinstance(x, float) and 0 < x < 1 for x in idle), str(idle))
            check("summary gives the measured idle and the schedule's bubble",
                  "pipeline: idle" in err and "gpipe pp=2 M=4 schedule's bubble is 20.0%" in err,
                  err[-600:])
            check("summary draws both ranks of the last step",
                  "rank  0 |" in err and "rank  1 |" in err, err[-600:])
            text = open(svg).read() if os.path.exists(svg) else ""
            # GPipe, M = 4: four forwards and four backwards on each of the two ranks.
            check("the SVG holds both ranks' forwards and backwards",
                  text.startswith("<svg") and text.count("<rect") == 16 and ">F3<" in text and ">B3<" in text,
                  text[:200])
        # --balance-stages: tiny's LM head (vocab 1000, C 32, T 16) counts as 1000 / 416 = 2.4
        # layers, so of 8 layers the first stage takes 5 (cost 5 of 10.4) instead of 4.
        rc, out, err = run([mpirun(), "-n", "2"] + base + ["--pp", "2", "--micro-batches", "2", "--balance-stages"])
        check("--balance-stages gives the head's stage fewer layers",
              rc == 0 and "embedding + layers [0, 5)" in err and "layers [5, 8) + ln_f + head" in err, err[-600:])
        # Layers weigh what they cost: mixtral-tiny at 8 layers costs 26880 FLOPs a token per MoE
        # layer (2 x (3072 attention + 128 router + 2 x 4608 expert) + 2048 for QK^T and AV at
        # T 16) and 17408 per dense layer (one 4608 MLP, no router), the head 64000. All MoE:
        # 8 + 2.38 units, the first stage ends nearest 5.19, after layer 5. With 2 dense layers
        # first: 2 x 0.648 + 6 + 2.38 = 9.68 units, half is 4.84, so layer 6 (5.30) beats
        # layer 5 (4.30); counting layers alike would keep [0, 5).
        moe = [mpirun(), "-n", "2"] + base + ["--model", "mixtral-tiny", "--n-layer", "8", "--pp", "2",
                                              "--micro-batches", "2", "--balance-stages"]
        rc, out, err = run(moe)
        check("--balance-stages, all layers MoE: [0, 5) + [5, 8)",
              rc == 0 and "embedding + layers [0, 5)" in err and "layers [5, 8) + ln_f + head" in err, err[-600:])
        rc, out, err = run(moe + ["--moe-first-k-dense", "2"])
        check("--balance-stages weighs the cheaper dense layers: [0, 6) + [6, 8)",
              rc == 0 and "embedding + layers [0, 6)" in err and "layers [6, 8) + ln_f + head" in err, err[-600:])
        rc, out, err = run(base + ["--balance-stages"])
        check("--balance-stages without a pipeline is refused", rc != 0 and "needs --pp > 1" in err, err[-300:])
        rc, out, err = run(base + ["--pipeline-timeline", f"{d}/none.svg"])
        check("--pipeline-timeline without a pipeline is refused",
              rc != 0 and "needs a pipeline" in err and not os.path.exists(f"{d}/none.svg"), err[-300:])


if __name__ == "__main__":
    main()
    finish()
