"""Slurm for real: a one-node Slurm cluster (munged, slurmctld, slurmd from Debian's packages,
tests/cluster/slurm.py) with 8 CPUs declared on this 2-core machine runs Trident's 8-rank hybrid
layout, dp 2 x tp 2 x pp 2, twice: launched directly with `srun --mpi=pmix -n 8` (OpenMPI wired
up by Slurm's PMIx, no mpirun), and through scripts/trident.sbatch submitted with
`sbatch --wait`, as a cluster user would. Both must equal the single-process run within the
tolerances of tests/cli/layout_matrix_test.py (losses 2e-5 relative; weights 1% of sum(lr))."""
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "cli"))
from harness import REPO, check, finish, read_metrics, run, synthetic_tokens, trident, write_shard  # noqa: E402
import safetensors_stdlib as st  # noqa: E402
from slurm import SlurmCluster, require_slurm  # noqa: E402

STEPS = 4
LR = 3e-3
# 8 ranks on 2 cores: ranks waiting in MPI yield the CPU (as scripts/trident-mpirun sets).
ENV = {"OMPI_MCA_mpi_yield_when_idle": "1", "TRIDENT_COMM_TIMEOUT": "120"}


def main():
    build = os.path.abspath(sys.argv[1])
    require_slurm()
    T = trident(build)
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(30000, 1000, 11))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(3000, 1000, 12))
        common = ["--model", "tiny", "--data", f"{d}/syn", "--batch-size", "16", "--seq-len", "32",
                  "--steps", str(STEPS), "--lr", str(LR), "--lr-schedule", "constant", "--eval-every", "0",
                  "--seed", "5", "--log-every", "100"]
        hybrid = ["--dp", "2", "--tp", "2", "--pp", "2", "--micro-batches", "4"]
        rc, _, err = run([T, "train"] + common + ["--ckpt-dir", f"{d}/ref", "--metrics", f"{d}/ref.jsonl"])
        check("single-process reference run", rc == 0, err[-1500:] if rc else "")
        if rc:
            return
        ref_loss = [m["loss"] for m in read_metrics(f"{d}/ref.jsonl")]
        ref_w = st.load(f"{d}/ref/step_{STEPS:08d}/model.safetensors")

        def compare(tag):
            loss = [m["loss"] for m in read_metrics(f"{d}/{tag}.jsonl")]
            loss_dev = max(abs(a - b) / abs(b) for a, b in zip(loss, ref_loss))
            w_dev, where = st.max_abs_diff(st.load(f"{d}/{tag}/step_{STEPS:08d}/model.safetensors"), ref_w)
            print(f"{tag}: loss rel dev {loss_dev:.2e}, weight abs dev {w_dev:.2e} ({where})")
            ok = len(loss) == STEPS and loss_dev < 2e-5
            check(f"{tag}: losses equal the single process's", ok, "" if ok else f"{loss} vs {ref_loss}")
            check(f"{tag}: weights equal the single process's", w_dev < 0.01 * STEPS * LR, f"{w_dev:.2e} at {where}")

        with SlurmCluster(cpus=8) as s:
            rc, out, err = s.run(["srun", "--mpi=list"], timeout=60)
            ok = rc == 0 and "pmix" in out
            check("Slurm offers PMIx (srun --mpi=list)", ok, "" if ok else out + err)

            rc, _, err = s.run(["srun", "--mpi=pmix", "--kill-on-bad-exit=1", "-n", "8", T, "train"] + common + hybrid +
                               ["--ckpt-dir", f"{d}/srun", "--metrics", f"{d}/srun.jsonl"], timeout=300, env=ENV)
            ok = rc == 0 and "layout dp 2 x tp 2 x pp 2 (world 8)" in err
            check("srun --mpi=pmix -n 8: dp 2 x tp 2 x pp 2 runs", ok, "" if ok else err[-2000:] + "\n" + s.logs())
            if rc == 0:
                compare("srun")

            log = f"{d}/sbatch.out"
            rc, out, err = s.run(["sbatch", "--wait", "--nodes=1", "--ntasks=8", "--ntasks-per-node=8",
                                  "--cpus-per-task=1", f"--output={log}", f"--chdir={REPO}",
                                  os.path.join(REPO, "scripts", "trident.sbatch")] + common + hybrid +
                                 ["--ckpt-dir", f"{d}/sbatch", "--metrics", f"{d}/sbatch.jsonl"],
                                 timeout=300, env=dict(ENV, TRIDENT=T))
            job_log = open(log).read() if os.path.exists(log) else "(no job output)"
            ok = rc == 0 and "done: step" in job_log
            check("sbatch --wait scripts/trident.sbatch (8 tasks) succeeds", ok,
                  "" if ok else f"{out}{err}\n{job_log[-2000:]}\n{s.logs()}")
            ok = "trident.sbatch: job" in job_log and "8 ranks on 1 node(s)" in job_log
            check("the job says what it got", ok, "" if ok else job_log[:500])
            if rc == 0:
                compare("sbatch")


if __name__ == "__main__":
    main()
    finish()
