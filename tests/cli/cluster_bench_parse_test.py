"""bench/cluster_bench.py (a root-only benchmark across simulated nodes, not run in CI) reads the
output of `trident bench comm` and `trident plan --json`; this keeps its parsers in step with
those formats on a local 2-rank run, and checks its ranking arithmetic."""
import importlib.util
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import REPO, check, finish, mpirun, run, trident  # noqa: E402


def load_bench():
    spec = importlib.util.spec_from_file_location("cluster_bench", os.path.join(REPO, "bench", "cluster_bench.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main():
    T = trident(sys.argv[1])
    cb = load_bench()
    rc, out, err = run([mpirun(), "-n", "2", T, "bench", "comm", "--min-bytes", "4K", "--max-bytes", "16K",
                        "--no-overlap"], timeout=300)
    check("bench comm on 2 ranks", rc == 0, err[-800:] if rc else "")
    tables = cb.parse_comm(out)
    # all_to_all_v sends whole units of its uneven pattern: a little under each size.
    ok = set(tables) == {"allreduce", "reduce_scatter", "all_gather", "all_to_all", "all_to_all_v"} and all(
        len(rows) == 2 and (name == "all_to_all_v" or [r[0] for r in rows] == ["4K", "16K"]) and
        all(x[1] > 0 and x[2] > 0 and x[3] > 0 for x in rows)
        for name, rows in tables.items())
    check("parse_comm reads every collective's rows (size, raw busbw, trident busbw, ratio)", ok, str(tables))
    with tempfile.TemporaryDirectory() as d:
        rc, _, err = run([T, "plan", "--model", "tiny", "--world", "8", "--batch-size", "8", "--seq-len", "64",
                          "--flops", "1e10", "--all", "--json", f"{d}/plan.jsonl"], timeout=300)
        check("trident plan --json", rc == 0, err[-800:] if rc else "")
        rows = [json.loads(line) for line in open(f"{d}/plan.jsonl")]
    picked = cb.pick_layouts(rows, "")
    shapes = [(r["dp"], r["tp"], r["pp"]) for r in picked]
    check("one layout per dp x tp x pp shape, ZeRO 0, in the planner's order",
          len(shapes) == len(set(shapes)) >= 6 and all(r["zero"] == 0 for r in picked)
          and [r["tokens_per_s"] for r in picked] == sorted((r["tokens_per_s"] for r in picked), reverse=True),
          str(shapes))
    only = cb.pick_layouts(rows, "dp8;dp2,tp2,pp2")
    check("--layouts picks the shapes named", sorted((r["dp"], r["tp"], r["pp"]) for r in only) == [(2, 2, 2), (8, 1, 1)],
          str(only))
    flags = cb.layout_flags(only[0])
    check("layout_flags gives trident train flags", flags.startswith("--dp ") and "--micro-batches" in flags, flags)
    moe_row = dict(only[0], dp=4, ep=2)
    check("layout_flags carries a mixture of experts' --ep", cb.layout_flags(moe_row).endswith(" --ep 2"),
          cb.layout_flags(moe_row))
    check("kendall_tau: same order 1, reversed -1",
          cb.kendall_tau([3, 2, 1], [30, 20, 10]) == 1.0 and cb.kendall_tau([3, 2, 1], [1, 2, 3]) == -1.0)
    finish()


if __name__ == "__main__":
    main()
