#!/usr/bin/env python3
"""Trident across 2 and 4 simulated nodes with shaped links (issue 16): for each node count and
link rate, a tests/cluster/netns.py cluster (network namespaces joined by veth pairs and a bridge;
every node's link shaped by tc) runs, all under OpenMPI's own remote launch over TCP:

  1. `trident bench comm` with 8 ranks: Trident's collectives vs raw blocking MPI on the same
     buffers in the same program run (allreduce / reduce_scatter / all_gather / all_to_all(_v) busbw, ratio);
  2. `trident plan --all --json` with 8 ranks, i.e. calibrated on this simulated cluster;
  3. `trident train` for one layout per dp x tp x pp shape (the planner's best schedule and
     micro-batch count for it, ZeRO 0), tokens/s from the metrics (step 1 dropped);
then prints predicted vs measured tokens/s per layout (within 15%?) and whether the planner's
ranking order matches the measured one (Kendall tau, top-1 agreement).

Link latency: netem is probed first; where the kernel lacks it (CONFIG_NET_SCH_NETEM, as in this
sandbox) only the rate can be shaped (tbf) and --delay is refused, so the "1 ms" half of a
1 Gbit/s + 1 ms link cannot be emulated here.

Needs root (ip netns). A benchmark, not a test: minutes per cluster on 2 cores. Its pieces
(Cluster, shaping, remote launch) are exercised by tests/cluster/*_test.py.

  sudo python3 bench/cluster_bench.py [--build build] [--nodes 2,4] [--rates 10gbit,1gbit]
      [--delay 50us] [--model tiny] [--batch-size 8] [--seq-len 64] [--steps 5] [--rounds 3]
      [--min-bytes 1M] [--max-bytes 4M] [--layouts "dp8;dp4,tp2;dp2,tp2,pp2"] [--out runs/cluster_bench]
      [--no-comm]
"""
import argparse
import itertools
import json
import os
import re
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "cluster"))
sys.path.insert(0, os.path.join(REPO, "tests", "cli"))
import netns  # noqa: E402
from harness import synthetic_tokens, write_shard  # noqa: E402

WORLD = 8


def parse_comm(out):
    """bench comm's table -> {collective: [(size, raw_busbw, tri_busbw, ratio)]}."""
    tables, current = {}, None
    for line in out.splitlines():
        # "# all_to_all_v (uneven pairs) (busbw ...": every table header, so no table's rows
        # run on into the one before.
        m = re.match(r"^# (\w+)(?: \([a-z ]+\))? \(busbw", line)
        if m:
            current = tables.setdefault(m.group(1), [])
            continue
        if current is not None and "|" in line and not line.startswith("#"):
            left, raw, tri, ratio = [p.split() for p in line.split("|")]
            current.append((left[0], float(raw[2]), float(tri[2]), float(ratio[0])))
    return tables


def layout_flags(r):
    s = f"--dp {r['dp']} --tp {r['tp']} --pp {r['pp']} --zero {r['zero']}"
    if r["pp"] > 1:
        s += f" --schedule {r['schedule']}"
    s += f" --micro-batches {r['micro_batches']}"
    if r["virtual_stages"] > 1:
        s += f" --virtual-stages {r['virtual_stages']}"
    if r["sequence_parallel"]:
        s += " --sequence-parallel"
    if r.get("ep", 1) > 1:  # a mixture of experts' expert-parallel split (Layout::train_flags)
        s += f" --ep {r['ep']}"
    return s


def pick_layouts(rows, wanted):
    """rows in the planner's rank order; one per dp x tp x pp shape (the first, i.e. best, with
    ZeRO 0), or the shapes in `wanted` ("dp4,tp2;..."), in rank order."""
    shapes = []
    if wanted:
        for item in wanted.split(";"):
            d = {"dp": 1, "tp": 1, "pp": 1}
            for tok in item.split(","):
                d[re.match(r"[a-z]+", tok).group(0)] = int(re.search(r"\d+", tok).group(0))
            shapes.append((d["dp"], d["tp"], d["pp"]))
    seen, out = set(), []
    for r in rows:
        key = (r["dp"], r["tp"], r["pp"])
        if r["zero"] != 0 or key in seen or (shapes and key not in shapes):
            continue
        seen.add(key)
        out.append(r)
    return out


def kendall_tau(a, b):
    """Kendall's tau between two score lists (1: same order, -1: reversed)."""
    conc = disc = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        s = (a[i] - a[j]) * (b[i] - b[j])
        conc += s > 0
        disc += s < 0
    n = conc + disc
    return (conc - disc) / n if n else 1.0


def measured_tokens_per_s(metrics):
    rows = [json.loads(line) for line in open(metrics)]
    rows = [r for r in rows if r["step"] > 1] or rows
    tokens = sum(r["tokens_per_s"] * r["step_ms"] / 1e3 for r in rows)
    return tokens / (sum(r["step_ms"] for r in rows) / 1e3)


def one_cluster(a, nodes, rate, T, log):
    rpn = WORLD // nodes
    tag = f"n{nodes}_{rate}"
    out_dir = os.path.join(a.out, tag)
    os.makedirs(out_dir, exist_ok=True)
    result = {"nodes": nodes, "rate": rate, "delay": a.delay}
    with netns.Cluster(nodes) as c:
        for i in range(nodes):
            c.shape(i, rate=rate, delay=a.delay)
        # 1. Communicator vs raw MPI.
        result["comm"] = {}
        t0 = time.time()
        if not a.no_comm:
            rc, out, err = c.mpirun(WORLD, [T, "bench", "comm", "--min-bytes", a.min_bytes, "--max-bytes",
                                            a.max_bytes, "--no-overlap"], rpn, timeout=1800)
            open(os.path.join(out_dir, "comm.txt"), "w").write(out + err)
            if rc != 0:
                raise RuntimeError(f"bench comm failed on {tag}: {err[-800:]}")
            result["comm"] = parse_comm(out)
            result["comm_s"] = time.time() - t0
            log(f"{tag}: bench comm {result['comm_s']:.0f} s")
        # 2. The planner calibrated on this cluster.
        plan_json = os.path.join(out_dir, "plan.jsonl")
        t0 = time.time()
        rc, out, err = c.mpirun(WORLD, [T, "plan", "--model", a.model, "--world", str(WORLD), "--batch-size",
                                        str(a.batch_size), "--seq-len", str(a.seq_len), "--cores", str(a.cores),
                                        "--all", "--json", plan_json], rpn, timeout=1800)
        open(os.path.join(out_dir, "plan.txt"), "w").write(out + err)
        if rc != 0:
            raise RuntimeError(f"trident plan failed on {tag}: {err[-800:]}")
        result["plan_s"] = time.time() - t0
        result["calibration"] = [line for line in out.splitlines() if line.startswith("calibrated")]
        rows = [json.loads(line) for line in open(plan_json)]
        layouts = pick_layouts(rows, a.layouts)
        log(f"{tag}: plan {result['plan_s']:.0f} s, {len(rows)} fitting rows, measuring {len(layouts)} layouts")
        # 3. Each layout's measured step: --rounds passes over all layouts (interleaved, so a
        # change in the machine's load hits every layout alike), the best round per layout.
        result["layouts"] = []
        rows_out = {}
        for rnd in range(a.rounds):
            for r in layouts:
                flags = layout_flags(r)
                name = f"dp{r['dp']}_tp{r['tp']}_pp{r['pp']}"
                metrics = os.path.join(out_dir, f"{name}.jsonl")
                if os.path.exists(metrics):
                    os.remove(metrics)
                argv = [T, "train", "--model", a.model, "--data", a.data, "--batch-size", str(a.batch_size),
                        "--seq-len", str(a.seq_len), "--steps", str(a.steps), "--eval-every", "0",
                        "--warmup-steps", "0", "--log-every", "1000", "--metrics", metrics, *flags.split()]
                t0 = time.time()
                rc, out, err = c.mpirun(WORLD, argv, rpn, timeout=1800)
                row = rows_out.setdefault(flags, {"flags": flags, "pred_tokens_per_s": r["tokens_per_s"],
                                                  "pred_step_ms": r["step_s"] * 1e3, "rounds": [],
                                                  "pred": {k: r.get(k) for k in ("dedicated_s", "shared_s", "contended_s",
                                                                                 "sync_s", "dp_comm_s")}})
                if rc != 0:
                    row["error"] = err.strip().splitlines()[-1][:200] if err.strip() else f"exit {rc}"
                else:
                    row["rounds"].append(measured_tokens_per_s(metrics))
                    row["meas_tokens_per_s"] = max(row["rounds"])
                log(f"{tag} round {rnd + 1}: {flags}: {time.time() - t0:.0f} s, "
                    + (f"{row['rounds'][-1]:.0f} tok/s (pred {row['pred_tokens_per_s']:.0f})"
                       if rc == 0 else row["error"]))
        result["layouts"] = list(rows_out.values())
    return result


def report(results, a):
    lines = []
    p = lines.append
    p(f"model {a.model}, batch {a.batch_size} x seq {a.seq_len}, {WORLD} ranks, {a.steps} steps per layout "
      f"(step 1 dropped), best of {a.rounds} interleaved rounds, link delay {a.delay or 'none (tbf: rate only)'}")
    for res in results:
        p("")
        p(f"== {res['nodes']} nodes x {WORLD // res['nodes']} ranks, links shaped to {res['rate']}")
        for line in res["calibration"]:
            p("  " + line)
        if res["comm"]:
            p(f"  {'collective':<15} {'size':>8} {'raw busbw':>10} {'tri busbw':>10} {'tri/raw':>8}   (GB/s)")
        for coll, rows in res["comm"].items():
            for size, raw, tri, ratio in rows:
                p(f"  {coll:<15} {size:>8} {raw:>10.4f} {tri:>10.4f} {ratio:>8.3f}")
        ok_rows = [r for r in res["layouts"] if "meas_tokens_per_s" in r]
        p(f"  {'layout':<96} {'pred tok/s':>10} {'meas tok/s':>10} {'meas/pred':>9} {'<=15%':>6}")
        for r in res["layouts"]:
            if "meas_tokens_per_s" not in r:
                p(f"  {r['flags']:<96} {r['pred_tokens_per_s']:>10.0f} {'failed':>10}   {r['error']}")
                continue
            q = r["meas_tokens_per_s"] / r["pred_tokens_per_s"]
            p(f"  {r['flags']:<96} {r['pred_tokens_per_s']:>10.0f} {r['meas_tokens_per_s']:>10.0f} {q:>9.2f} "
              f"{'yes' if abs(q - 1) <= 0.15 else 'no':>6}")
        if len(ok_rows) >= 2:
            pred = [r["pred_tokens_per_s"] for r in ok_rows]
            meas = [r["meas_tokens_per_s"] for r in ok_rows]
            within = sum(abs(m / q - 1) <= 0.15 for m, q in zip(meas, pred))
            order_pred = sorted(range(len(ok_rows)), key=lambda i: -pred[i])
            order_meas = sorted(range(len(ok_rows)), key=lambda i: -meas[i])
            p(f"  within 15%: {within} of {len(ok_rows)}; ranking order identical: "
              f"{'yes' if order_pred == order_meas else 'no'}; Kendall tau {kendall_tau(pred, meas):.2f}; "
              f"planner's best measured best: {'yes' if order_pred[0] == order_meas[0] else 'no'} "
              f"(measured best: {ok_rows[order_meas[0]]['flags']})")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(REPO, "build"))
    ap.add_argument("--nodes", default="2,4")
    ap.add_argument("--rates", default="10gbit,1gbit")
    ap.add_argument("--delay", default=None, help="netem delay per link (e.g. 50us); needs netem")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="runs per layout (interleaved); the best counts")
    ap.add_argument("--min-bytes", default="1M")
    ap.add_argument("--max-bytes", default="4M")
    ap.add_argument("--cores", type=int, default=os.cpu_count())
    ap.add_argument("--data", default="", help="token shard prefix (default: a synthetic one for "
                    "the tiny preset's 1000-token vocabulary)")
    ap.add_argument("--layouts", default="")
    ap.add_argument("--no-comm", action="store_true", help="skip step 1 (bench comm): planner vs measured only")
    ap.add_argument("--out", default=os.path.join(REPO, "runs", "cluster_bench"))
    ap.add_argument("--report", metavar="RESULTS_JSON", help="only print the report of an earlier run's results.json")
    a = ap.parse_args()
    if a.report:
        print(report(json.load(open(a.report)), a))
        return
    netns.require_namespaces()
    if a.delay and not netns.netem_available():
        sys.exit("--delay needs tc's netem qdisc, which this kernel lacks (CONFIG_NET_SCH_NETEM); "
                 "drop --delay to shape the rate only (tbf)")
    T = os.path.join(os.path.abspath(a.build), "trident")
    if not os.access(T, os.X_OK):
        sys.exit(f"no {T}: build first (ninja -C build trident) or pass --build DIR")
    os.makedirs(a.out, exist_ok=True)
    if not a.data:
        a.data = os.path.join(a.out, "syn")
        write_shard(a.data + "_train.bin", synthetic_tokens(200000, 1000, 5))
        write_shard(a.data + "_val.bin", synthetic_tokens(20000, 1000, 6))

    def log(msg):
        print(msg, file=sys.stderr, flush=True)
    log(f"netem available: {netns.netem_available()}")
    results = []
    for nodes in [int(x) for x in a.nodes.split(",")]:
        if WORLD % nodes:
            sys.exit(f"--nodes {nodes}: {WORLD} ranks do not split evenly")
        for rate in a.rates.split(","):
            results.append(one_cluster(a, nodes, rate, T, log))
            json.dump(results, open(os.path.join(a.out, "results.json"), "w"), indent=1)
    text = report(results, a)
    print(text)
    open(os.path.join(a.out, "report.txt"), "w").write(text + "\n")


if __name__ == "__main__":
    main()
