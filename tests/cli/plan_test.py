"""`trident plan`: its flags do what --help says and --json writes the documented fields
(docs/planner.md): every row a valid layout of the world, ranked by predicted tokens/s, within
--memory-per-rank; --top, --all, --micro-batches, --sequence-parallel, --flops, --link-gbps,
--no-overlap change the output as documented; the 'best:' line is the first row's layout; a
mixture of experts gets its ep splits of dp;
a limit that only optimizer offload fits gets offload rows (priced from --disk-mbps or the disk
measured under --offload-dir), and without the disk the refusal says what offload would need;
under mpirun the ranks calibrate together (calibrated_ranks). Mostly with --flops and a given
--link-gbps, so nothing is timed and the predictions are deterministic."""
import json
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import check, finish, mpirun, run, trident  # noqa: E402

FIELDS = {"dp", "tp", "pp", "ep", "zero", "schedule", "virtual_stages", "micro_batches", "sequence_parallel", "fits",
          "tokens_per_s", "step_s", "memory_bytes", "calibrated_ranks", "offload", "offload_s"}
TINY_ALLOCATED = 135744 + 24 * 32  # tiny's parameters + padded vocabulary rows at tp 1
ROW = re.compile(r"^\s*\d+\s+dp(\d+) tp(\d+) pp(\d+)\s", re.M)


def main():
    build = sys.argv[1]
    T = trident(build)
    base = [T, "plan", "--model", "tiny", "--world", "8", "--batch-size", "16", "--seq-len", "32"]
    with tempfile.TemporaryDirectory() as d:
        def plan(*flags, cmd=None):
            path = f"{d}/plan.jsonl"
            if os.path.exists(path):
                os.remove(path)
            flags = list(flags)
            if "--flops" in flags and "--link-gbps" not in flags:
                flags += ["--link-gbps", "5"]  # a fixed link too, so the predictions are deterministic
            rc, out, err = run((cmd or base) + flags + ["--json", path], timeout=300)
            rows = [json.loads(line) for line in open(path)] if rc == 0 and os.path.exists(path) else []
            return rc, out + err, rows

        rc, text, rows = plan("--flops", "1e10")
        check("plan --json runs and writes rows", rc == 0 and len(rows) > 10, "" if rows else text[-500:])
        if not rows:
            return
        check("every JSON row has the documented fields", all(FIELDS <= set(r) for r in rows),
              str([sorted(FIELDS - set(r)) for r in rows if not FIELDS <= set(r)][:3]))
        check("every row is a layout of 8 ranks that fits", all(r["dp"] * r["tp"] * r["pp"] == 8 and r["fits"]
                                                                 for r in rows))
        check("rows are ranked by predicted tokens/s",
              all(a["tokens_per_s"] >= b["tokens_per_s"] for a, b in zip(rows, rows[1:])))
        check("tokens/s = global tokens / step time",
              all(abs(r["tokens_per_s"] * r["step_s"] - 512) < 1e-6 * 512 for r in rows))
        check("calibrated_ranks is 1 when run alone", all(r["calibrated_ranks"] == 1 for r in rows))
        best = rows[0]
        want = (f"--dp {best['dp']} --tp {best['tp']} --pp {best['pp']} --zero {best['zero']} "
                f"--schedule {best['schedule']} --micro-batches {best['micro_batches']}")
        best_line = (f"best: scripts/trident-mpirun -n 8 build/trident train --model tiny --batch-size 16 --seq-len 32 "
                     f"{want}")
        check("the best: line is the first row's layout", best_line in text, f"wanted '{best_line}'")

        # --memory-per-rank: every row within it, fewer rows than unlimited; too little is an error.
        limit = sorted(r["memory_bytes"] for r in rows)[len(rows) // 2]
        rc, text, capped = plan("--flops", "1e10", "--memory-per-rank", str(int(limit)))
        check("--memory-per-rank: --json keeps only the rows that fit in it",
              rc == 0 and 0 < len(capped) < len(rows) and all(r["memory_bytes"] <= limit for r in capped),
              f"{len(capped)} of {len(rows)} rows")
        rc, text, _ = plan("--flops", "1e10", "--memory-per-rank", "1KiB")
        refused = rc != 0 and "no layout of 8 ranks fits in 1.00 KiB" in text
        check("a limit nothing fits in is refused", refused, "" if refused else text[-300:])

        check("without a memory limit no row offloads", all(not r["offload"] and r["offload_s"] == 0 for r in rows))

        # Optimizer offload (4 KiB blocks: tiny's staging then stays well below its moments).
        off = ["--flops", "1e10", "--offload-block-kib", "4"]
        rc, text, offloaded = plan(*off, "--offload", "optimizer", "--disk-mbps", "1000")
        check("--offload optimizer: every row offloads, with its disk time",
              rc == 0 and offloaded and all(r["offload"] and r["offload_s"] > 0 for r in offloaded), text[-300:])
        with_min = min((r["memory_bytes"] for r in offloaded), default=0)
        without_min = min(r["memory_bytes"] for r in rows)
        between = str(int((with_min + without_min) / 2))
        rc, text, only = plan(*off, "--disk-mbps", "1000", "--memory-per-rank", between)
        check("a limit only offload fits: the fitting rows offload (--offload auto, the default)",
              rc == 0 and only and all(r["offload"] and r["memory_bytes"] <= float(between) for r in only),
              text[-500:])
        check("the table marks the offload rows with their disk time", re.search(r"path|cores", text) is not None
              and re.search(r"\bdisk \d+\.\d ms", text) is not None, text[-500:])
        check("the best: line offloads", "--offload optimizer --offload-dir DIR" in text, text[-300:])
        slow = plan(*off, "--disk-mbps", "1", "--memory-per-rank", between)[2]
        def key(r):
            return (r["dp"], r["tp"], r["pp"], r["zero"], r["schedule"], r["virtual_stages"], r["micro_batches"])
        fast_by = {key(r): r for r in only}
        check("a slower disk predicts longer offloaded steps",
              slow and all(r["step_s"] > fast_by[key(r)]["step_s"] for r in slow if key(r) in fast_by))
        rc, text, _ = plan(*off, "--memory-per-rank", between)
        ok = rc != 0 and "with --offload optimizer the smallest would need" in text and "--offload-dir" in text
        check("without the disk the refusal names offload's requirement and how to price it", ok, text[-400:])
        rc, text, _ = plan(*off, "--disk-mbps", "1000", "--memory-per-rank", str(int(with_min / 2)))
        ok = rc != 0 and "even with --offload optimizer" in text
        check("below even offload's requirement: refused, saying so", ok, text[-400:])
        rc, text, _ = plan(*off, "--offload", "optimizer")
        check("--offload optimizer without a disk is refused", rc != 0 and "--offload-dir" in text, text[-300:])

        # optimizer+params: the layers' shard-slice reads are priced. 16 cores: the step is the
        # critical path, which the reads' stalls lengthen. Per micro-batch each ZeRO-3 group's
        # slice is read before its forward and before its backward gather: 2 x 4 bytes per shard
        # element, at the disk's read rate shared by the node's 8 ranks; the first group's read
        # of a forward waits in full, the rest only where the disk is slower than the pass.
        prm = off + ["--cores", "16"]
        for mbps in ("1000", "0.001"):
            rc, text, with_params = plan(*prm, "--offload", "optimizer+params", "--disk-mbps", mbps)
            _, _, opt_only = plan(*prm, "--offload", "optimizer", "--disk-mbps", mbps)
            z3 = [r for r in with_params if r["zero"] == 3]
            check(f"optimizer+params at {mbps} MB/s: the ZeRO-3 rows price the layers' reads, the others none",
                  rc == 0 and z3 and all(r["param_read_s"] > 0 < r["param_stall_s"] <= r["param_read_s"] for r in z3)
                  and all(r["param_read_s"] == 0 == r["param_stall_s"] for r in with_params if r["zero"] < 3),
                  text[-400:])
            dp_only = [r for r in z3 if r["tp"] == 1 and r["pp"] == 1 and r["dp"] == 8]
            want = [r["micro_batches"] * 2 * 4 * -(-TINY_ALLOCATED // 8) / (float(mbps) * 1e6 / 8) for r in dp_only]
            check(f"optimizer+params at {mbps} MB/s: dp8 rows read 2 x 4 bytes x the shard per micro-batch",
                  dp_only and all(abs(r["param_read_s"] - w) <= 1e-9 * w for r, w in zip(dp_only, want)),
                  str([(r["micro_batches"], r["param_read_s"], w) for r, w in zip(dp_only, want)]))
            opt_by = {key(r): r for r in opt_only}
            # Without a pipeline (whose bubbles may absorb a stall) the stalls lengthen the critical
            # path beyond optimizer offload's, whose update moves 8 of the 12 bytes per element: at
            # least by the stall itself.
            longer = [(r["dedicated_s"], opt_by[key(r)]["dedicated_s"], r["param_stall_s"]) for r in z3
                      if key(r) in opt_by and r["pp"] == 1]
            check(f"optimizer+params at {mbps} MB/s: each ZeRO-3 critical path (pp 1) is longer than optimizer "
                  "offload's by at least its stall", longer and all(p >= o + s * (1 - 1e-9) for p, o, s in longer),
                  str(longer[:3]))
            if mbps == "0.001":
                check("a disk far slower than the passes hides almost none of the reads",
                      all(r["param_stall_s"] >= 0.99 * r["param_read_s"] for r in z3), str(z3[:2]))
            else:
                check("a fast disk hides the reads but the first group's (the stall is a fraction of the reads)",
                      all(r["param_stall_s"] < 0.75 * r["param_read_s"] for r in z3 if r["pp"] == 1),
                      str([(r["param_stall_s"], r["param_read_s"]) for r in z3][:3]))
        check("the table shows the update's and the reads' disk times",
              re.search(r"disk\+params \d+\.\d \+ \d+\.\d ms \(\d+\.\d waited\)", text) is not None, text[-500:])
        one_rank = list(base)
        one_rank[one_rank.index("--world") + 1] = "1"
        rc, text, one = plan("--flops", "1e10", "--offload", "optimizer+params", "--disk-mbps", "1000", cmd=one_rank)
        check("one rank with --offload optimizer+params gets a ZeRO-3 row (the parameters on disk)",
              rc == 0 and any(r["zero"] == 3 and r["param_read_s"] > 0 for r in one), text[-400:])
        with tempfile.TemporaryDirectory() as disk:
            rc, text, measured = plan(*off, "--offload-dir", disk, "--memory-per-rank", between)
            ok = rc == 0 and measured and all(r["offload"] for r in measured) and "offload disk under" in text
            check("--offload-dir: the disk is measured there and prices the offload rows", ok, text[-500:])
            check("the best: line names the --offload-dir", f"--offload-dir {disk}" in text)
            check("the disk probe is removed", os.listdir(disk) == [], str(os.listdir(disk)))
        rc, text, _ = plan(*off, "--offload-dir", f"{d}/no-such-dir", "--memory-per-rank", between)
        check("a missing --offload-dir is one clear error", rc != 0 and "does not exist" in text, text[-300:])

        rc, text, _ = plan("--flops", "1e10", "--top", "3")
        shown = ROW.findall(text)
        check("--top 3 shows 3 rows", rc == 0 and len(shown) == 3, f"{len(shown)} rows")
        rc, all_text, _ = plan("--flops", "1e10", "--all")
        check("--all shows every micro-batch count (one table row per JSON row)",
              rc == 0 and len(ROW.findall(all_text)) == len(rows), f"{len(ROW.findall(all_text))} vs {len(rows)}")
        check("without --all fewer rows are shown", len(ROW.findall(plan("--flops", "1e10")[1])) < len(rows))

        rc, _, m2 = plan("--flops", "1e10", "--micro-batches", "2")
        check("--micro-batches 2: every row has 2 micro-batches", rc == 0 and m2 and all(r["micro_batches"] == 2
                                                                                       for r in m2))
        rc, _, sp = plan("--flops", "1e10", "--sequence-parallel")
        check("--sequence-parallel: every tp > 1 row is sequence parallel",
              rc == 0 and any(r["tp"] > 1 for r in sp) and all(r["sequence_parallel"] == (r["tp"] > 1) for r in sp))

        def by_layout(rs):
            return {(r["dp"], r["tp"], r["pp"], r["zero"], r["schedule"], r["virtual_stages"], r["micro_batches"]):
                    r for r in rs}
        ref = by_layout(rows)
        _, _, fast = plan("--flops", "2e10")
        check("--flops 2e10 predicts a shorter step for every layout than 1e10",
              all(r["step_s"] < ref[k]["step_s"] for k, r in by_layout(fast).items() if k in ref), "")
        _, _, slow_link = plan("--flops", "1e10", "--link-gbps", "0.01", "--latency-us", "2000")
        dp_rows = [k for k in by_layout(slow_link) if k[0] > 1 and k in ref]
        check("a slower link predicts longer steps for dp layouts",
              dp_rows and all(by_layout(slow_link)[k]["step_s"] > ref[k]["step_s"] for k in dp_rows))
        # (16 cores: the step is bound by the critical path, where overlap counts, not by the cores.)
        _, _, no_overlap = plan("--flops", "1e10", "--link-gbps", "0.01", "--cores", "16", "--no-overlap")
        _, _, overlap = plan("--flops", "1e10", "--link-gbps", "0.01", "--cores", "16")
        o, n = by_layout(overlap), by_layout(no_overlap)
        check("--no-overlap never predicts a shorter step, and a longer one for some dp layout",
              all(n[k]["step_s"] >= o[k]["step_s"] for k in n if k in o) and
              any(n[k]["step_s"] > o[k]["step_s"] for k in n if k in o and k[0] > 1))

        check("a dense model gets no expert-parallel rows", all(r["ep"] == 1 for r in rows))
        # A mixture of experts: ep splits of dp (ZeRO 0-3, dividing the 4 experts) ranked with the rest.
        moe = [T, "plan", "--model", "mixtral-tiny", "--world", "4", "--batch-size", "8", "--seq-len", "16"]
        rc, text, mrows = plan("--flops", "1e10", "--all", cmd=moe)
        eps = {(r["dp"], r["ep"]) for r in mrows if r["ep"] > 1}
        check("plan --model mixtral-tiny lists ep 2 and 4 splits of dp",
              rc == 0 and eps == {(2, 2), (4, 2), (4, 4)}, f"{sorted(eps)}" if rc == 0 else text[-500:])
        check("ep rows split dp, at every ZeRO stage", all(r["dp"] % r["ep"] == 0 for r in mrows if r["ep"] > 1) and
              {r["zero"] for r in mrows if r["ep"] > 1} == {0, 1, 2, 3})
        check("the table shows the ep rows", "dp4 tp1 pp1 ep2" in text and "dp4 tp1 pp1 ep4" in text)
        fast_link = plan("--flops", "1e10", "--link-gbps", "1e6", "--latency-us", "0", cmd=moe)[2]
        slow_link = plan("--flops", "1e10", "--link-gbps", "1", "--latency-us", "5000", cmd=moe)[2]
        def first_dp4(rs, ep):  # rank of the best dp4 x tp1 x pp1 ZeRO-0 row at this ep
            return next((i for i, r in enumerate(rs) if (r["dp"], r["tp"], r["ep"], r["zero"]) == (4, 1, ep, 0)), None)
        ranks = [first_dp4(fast_link, 2), first_dp4(fast_link, 1), first_dp4(slow_link, 2), first_dp4(slow_link, 1)]
        check("dp4 ep2 ranks above dp4 ep1 with free links and below it with latency-bound ones",
              None not in ranks and ranks[0] < ranks[1] and ranks[2] > ranks[3], f"{ranks}")
        check("ep rows report their exchange time (ep_comm_s)",
              all((r["ep_comm_s"] > 0) == (r["ep"] > 1) for r in slow_link))

        # Calibration: alone (times the model here) and under mpirun with all ranks at once.
        rc, text, timed = plan("--top", "1")
        ok = rc == 0 and timed and "hint: timed alone" in text
        check("plan calibrates alone", ok, "" if ok else text[-300:])
        # --precision: the pieces are timed with the run's matmul precision, and the best: line carries it.
        rc, text, timed16 = plan("--top", "1", "--precision", "bf16")
        ok = rc == 0 and timed16 and "bf16 matmuls" in text and " --precision bf16" in text.split("best:")[-1]
        check("plan --precision bf16 times bf16 matmuls and proposes --precision bf16", ok, "" if ok else text[-500:])
        def mem_by_layout(rs):
            return {(r["dp"], r["tp"], r["pp"], r["zero"], r["schedule"], r["micro_batches"]): r["memory_bytes"] for r in rs}
        m32, m16 = mem_by_layout(timed or []), mem_by_layout(timed16 or [])
        same = [k for k in m32 if k in m16]
        # bf16 changes two terms (docs/memory.md): each layer's four matmul-only operands and the
        # head's ln_f output are saved in 2 bytes (tiny, L 8, C 32, GPT-2: 2 * 7 N C bytes less a
        # layer and 2 N C less for ln_f; at dp8 tp1 pp1 a micro-batch is N = 16/8/M x 32 tokens), and
        # the bf16 weight copy adds 2 bytes per parameter element held (ZeRO 0-2: every element,
        # whatever M). So m16 - m32 + (L 14 + 2) N C is one positive constant at ZeRO 0, and
        # another, smaller one at ZeRO 1 and 2 (the same at both): there the fp32 master of the
        # operand-only parameters is sharded (docs/memory.md), 4 bytes an element less on 7 of 8 ranks.
        check("plan's bf16 memory stays within 1.5x of fp32's on every layout",
              same and all(m16[k] <= 1.5 * m32[k] for k in same), f"{len(same)} common layouts")
        dp8 = [k for k in same if k[:3] == (8, 1, 1) and k[3] < 3]
        copy = {z: {m16[k] - m32[k] + (8 * 14 + 2) * (16 // 8 // k[5]) * 32 * 32 for k in dp8 if k[3] == z}
                for z in range(3)}
        check("at dp8 tp1 pp1 ZeRO 0: bf16 = fp32 - (L * 14 + 2) N C (16-bit operands, ln_f) + one weight copy (2 B/element)",
              len({k[5] for k in dp8 if k[3] == 0}) > 1 and len(copy[0]) == 1 and min(copy[0]) > 0 and min(copy[0]) % 2 == 0,
              f"copy bytes per layout {copy} over {dp8}")
        check("at dp8 tp1 pp1 ZeRO 1 and 2: one constant, the same at both, below ZeRO 0's (the master sharded)",
              all(len(copy[z]) == 1 for z in (1, 2)) and copy[1] == copy[2] and min(copy[1]) < min(copy[0]),
              f"copy bytes per layout {copy}")
        rc, text, _ = plan("--top", "1", "--precision", "fp8")
        check("plan --precision fp8 is refused naming the accepted values", rc != 0 and "fp8" in text and "bf16" in text,
              text[-300:])
        cmd = [mpirun(), "-n", "2", T, "plan", "--model", "tiny", "--world", "2", "--batch-size", "8", "--seq-len", "32",
               "--top", "1"]
        rc, text, together = plan(cmd=cmd)
        ok = rc == 0 and together and all(r["calibrated_ranks"] == 2 for r in together) and "timed alone" not in text
        check("under mpirun -n 2 the ranks calibrate together", ok, "" if ok else text[-500:])


if __name__ == "__main__":
    main()
    finish()
