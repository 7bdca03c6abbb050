"""The layout matrix's core rows across simulated nodes (tests/cluster/netns.py): OpenMPI's own
remote launch over a hostfile, TCP between nodes, shared memory only inside one. Each row trains
the tiny model 5 steps and must match the single-process run within the tolerances of
tests/cli/layout_matrix_test.py (losses 2e-5 relative; weights 1% of sum(lr), Adam's per-step
budget), since a node boundary changes only which wire a sum travels over, not its order.

Each row also checks where the ranks ran: the start-up line "nodes: N (node0: ranks ...)" is
built from every rank's processor name, which is the hostname of the namespace it actually ran
in (scripts/netns-agent gives each node its own), so a tp group listed under one node really ran
on one node. Rows launched with --map-by node (round robin: launcher ranks 0 and 1 on different
nodes) show that Trident regroups ranks by node for any placement. And every node must have
received at least one step's worth of gradient bytes over its link, so the traffic really went
over TCP between the namespaces. Every link is shaped to 1 Gbit/s (tc) throughout."""
import os
import re
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "cli"))
from harness import check, finish, read_metrics, run, synthetic_tokens, trident, write_shard  # noqa: E402
import safetensors_stdlib as st  # noqa: E402
from netns import Cluster, eth0_bytes, require_namespaces  # noqa: E402

STEPS = 5
PARAMS = 135744  # the tiny preset


def placement(err):
    """{node name: [mesh ranks]} from the start-up line, e.g. 'nodes: 2 (node0: ranks 0-1 (...); ...)'."""
    m = re.search(r"^nodes: \d+ \((.*)\)$", err, re.M)
    if not m:
        return {}
    out = {}
    for part in m.group(1).split("; "):
        name, ranks = re.match(r"(\S+): ranks ([\d,-]+)", part).groups()
        listed = []
        for piece in ranks.split(","):
            a, _, b = piece.partition("-")
            listed += range(int(a), int(b or a) + 1)
        out[name] = listed
    return out


def main():
    build = sys.argv[1]
    require_namespaces()
    T = trident(build)
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(30000, 1000, 11))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(3000, 1000, 12))
        lr = 3e-3
        common = ["train", "--model", "tiny", "--data", f"{d}/syn", "--batch-size", "16", "--seq-len", "32",
                  "--steps", str(STEPS), "--lr", str(lr), "--lr-schedule", "constant", "--eval-every", "0",
                  "--seed", "5", "--log-every", "100"]
        rc, _, err = run([T] + common + ["--ckpt-dir", f"{d}/ref", "--metrics", f"{d}/ref.jsonl"])
        check("single-process reference run", rc == 0, err[-1500:] if rc else "")
        if rc:
            return
        ref_loss = [m["loss"] for m in read_metrics(f"{d}/ref.jsonl")]
        ref_w = st.load(f"{d}/ref/step_{STEPS:08d}/model.safetensors")
        budget = STEPS * lr
        # (nodes, ranks per node, map-by, dp, tp, pp, extra flags)
        rows = [
            (4, 1, "slot", 4, 1, 1, ["--zero", "1"]),                      # dp only, every rank a node
            (2, 2, "node", 2, 2, 1, []),                                  # tp inside a node, dp across
            (2, 2, "slot", 1, 2, 2, ["--micro-batches", "4"]),            # pp across nodes
            (4, 2, "node", 2, 2, 2, ["--micro-batches", "4"]),            # 3D over 4 nodes
        ]
        with Cluster(4) as c:
            # Every row runs over shaped links: 1 Gbit/s out of every node (netem where the kernel
            # has it, else tbf; this only shows that shaping leaves the results alone).
            for i in range(4):
                c.shape(i, rate="1gbit")
            qdiscs = [c.run(["ip", "netns", "exec", ns, "tc", "qdisc", "show", "dev", "eth0"])[1] for ns in c.ns]
            check("every node's link is shaped to 1 Gbit/s", all("rate 1Gbit" in q for q in qdiscs), f"{qdiscs}")
            for nodes, per_node, map_by, dp, tp, pp, extra in rows:
                tag = f"n{nodes}x{per_node}_{map_by}_dp{dp}_tp{tp}_pp{pp}"
                world = dp * tp * pp
                args = [T] + common + ["--dp", str(dp), "--tp", str(tp), "--pp", str(pp), *extra,
                                       "--ckpt-dir", f"{d}/{tag}", "--metrics", f"{d}/{tag}.jsonl"]
                before = eth0_bytes(c)
                rc, _, err = c.mpirun(world, args, per_node, map_by=map_by, nodes=nodes, timeout=240,
                                      env={"TRIDENT_COMM_TIMEOUT": "120"})
                got = [b - a for a, b in zip(before, eth0_bytes(c))][:nodes]
                if rc != 0:
                    check(f"{tag} runs", False, err.strip()[-2000:])
                    continue
                loss = [x["loss"] for x in read_metrics(f"{d}/{tag}.jsonl")]
                loss_dev = max(abs(a - b) / abs(b) for a, b in zip(loss, ref_loss))
                w_dev, where = st.max_abs_diff(st.load(f"{d}/{tag}/step_{STEPS:08d}/model.safetensors"), ref_w)
                print(f"{tag}: loss rel dev {loss_dev:.2e}, weight abs dev {w_dev:.2e} ({where}), "
                      f"bytes received per node {got}", flush=True)
                ok = len(loss) == STEPS and loss_dev < 2e-5
                check(f"{tag} losses", ok, "" if ok else f"{loss} vs {ref_loss}")
                check(f"{tag} weights", w_dev < 0.01 * budget, f"{w_dev:.2e} at {where}")
                where_ran = placement(err)
                check(f"{tag} ran on {nodes} nodes, {per_node} ranks each",
                      len(where_ran) == nodes and all(len(r) == per_node for r in where_ran.values()),
                      f"{where_ran}")
                node_of = {r: n for n, ranks in where_ran.items() for r in ranks}
                spans = [g for g in range(0, world, tp) if len({node_of.get(r) for r in range(g, g + tp)}) != 1]
                check(f"{tag} every tp group on one node", not spans and "warning: tp group" not in err,
                      f"groups starting at {spans}; {where_ran}")
                # One step's dp gradient allreduce (or pp activations) alone moves more than this.
                check(f"{tag} traffic went over each node's link", all(b > 4 * PARAMS / (tp * pp) for b in got),
                      f"{got}")

            # A hostfile whose nodes hold 3 ranks with tp 2: one tp group must span two nodes.
            # The run is still correct; Trident says so at start-up.
            rc, _, err = c.mpirun(6, [T] + common + ["--steps", "1", "--batch-size", "12", "--dp", "3", "--tp", "2"],
                                  3, nodes=2, timeout=240, env={"TRIDENT_COMM_TIMEOUT": "120"})
            check("3 ranks per node with tp 2 runs", rc == 0, err.strip()[-1500:] if rc else "")
            check("3 ranks per node with tp 2 warns that ranks 2-3 span node0, node1",
                  "warning: tp group of ranks 2-3 spans nodes node0, node1" in err, err[:1500])
        check("no namespace left behind", not c.remaining(), f"{c.remaining()}")


if __name__ == "__main__":
    main()
    finish()
