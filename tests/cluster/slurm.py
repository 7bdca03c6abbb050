"""A real one-node Slurm cluster on this machine, for tests: munged, slurmctld and slurmd
(Debian's packages) started as root in the foreground from a temporary directory with a
slurm.conf written here, inside a network namespace of their own (its loopback and a veth
pair with a private address, so the daemons' ports can clash with nothing and nothing touches
the host's network), and
stopped on every exit path.

    with SlurmCluster(cpus=8) as s:
        rc, out, err = s.run(["srun", "-n", "8", ...])   # SLURM_CONF points at its slurm.conf

The node is declared with `cpus` CPUs whatever the machine has (SlurmdParameters=
config_overrides) and the partition oversubscribes, so 8 tasks fit on a 2-core machine."""
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from netns import remove_leftovers

DAEMONS = ["munged", "slurmctld", "slurmd"]


def require_slurm():
    """Exits 77 (ctest: skipped) without root or without Slurm's and munge's binaries."""
    missing = [b for b in DAEMONS + ["srun", "sbatch", "sinfo"] if shutil.which(b) is None]
    if os.geteuid() != 0 or missing:
        print(f"skipped: needs root and Slurm + munge (scripts/setup.sh installs them); missing {missing}")
        sys.exit(77)
    remove_leftovers()


class SlurmCluster:
    def __init__(self, cpus=8, node="trident1"):
        self.cpus, self.node = cpus, node
        # Named like tests/cluster/netns.py's, so a leftover of a killed run is removed the same way.
        self.ns = f"trid{os.getpid()}x{secrets.token_hex(3)}-n0"
        self.dir = None
        self.procs = []
        self._old = {}

    def __enter__(self):
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc):
        self.down()
        return False

    def _path(self, name):
        return os.path.join(self.dir, name)

    def up(self):
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._old[sig] = signal.signal(sig, lambda s, f: (_ for _ in ()).throw(SystemExit(128 + s)))
        self.dir = tempfile.mkdtemp(prefix=f"{self.ns}-slurm-")  # 0700, as munged wants
        subprocess.run(["ip", "netns", "add", self.ns], check=True, capture_output=True)
        # Beside loopback, one address of its own: Slurm looks its listening address up with
        # AI_ADDRCONFIG, which finds nothing where only loopback is configured.
        for cmd in (["link", "set", "lo", "up"], ["link", "add", "eth0", "type", "veth", "peer", "name", "eth1"],
                    ["addr", "add", "10.78.0.1/24", "dev", "eth0"], ["link", "set", "eth0", "up"],
                    ["link", "set", "eth1", "up"]):
            subprocess.run(["ip", "-n", self.ns, *cmd], check=True, capture_output=True)
        for sub in ("state", "spool", "munge"):
            os.makedirs(self._path(sub), mode=0o700)
        key = self._path("munge/munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o400)
        sock = self._path("munge/munge.socket")
        # slurmd 22.05 will not start without reading the machine's cgroups, which `ip netns exec`
        # hides behind a fresh /sys: the daemons and commands enter only the network namespace
        # (nsenter). Processes are tracked without cgroups (proctrack/linuxproc), so nothing is
        # created in them.
        with open(self._path("slurm.conf"), "w") as f:
            f.write(f"""ClusterName=trident
SlurmctldHost={socket.gethostname()}(127.0.0.1)
MailProg=/bin/true
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={sock}
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation={self._path('state')}
SlurmdSpoolDir={self._path('spool')}
SlurmctldPidFile={self._path('slurmctld.pid')}
SlurmdPidFile={self._path('slurmd.pid')}
SlurmctldLogFile={self._path('slurmctld.log')}
SlurmdLogFile={self._path('slurmd.log')}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=1000 State=UNKNOWN
PartitionName=main Nodes={self.node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:{self.cpus}
""")
        self._start(["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={sock}",
                     f"--pid-file={self._path('munge/munged.pid')}", f"--log-file={self._path('munged.log')}",
                     f"--seed-file={self._path('munge/munged.seed')}"], "munged")
        self._wait(lambda: os.path.exists(sock), "munged's socket", "munged.log")
        self._start(["slurmctld", "-D", "-i", "-f", self._path("slurm.conf")], "slurmctld")
        self._start(["slurmd", "-D", "-N", self.node, "-f", self._path("slurm.conf")], "slurmd")
        self._wait(self._node_idle, f"node {self.node} idle in sinfo", "slurmd.log")

    def _start(self, argv, name):
        log = open(self._path(f"{name}.out"), "w")
        self.procs.append(subprocess.Popen(self.inside(argv), stdout=log,
                                           stderr=subprocess.STDOUT, env=self.env()))
        log.close()

    def _node_idle(self):
        rc, out, _ = self.run(["sinfo", "-h", "-N", "-o", "%t"], timeout=30)
        return rc == 0 and out.strip() == "idle"

    def _wait(self, ready, what, log, limit=60):
        start = time.time()
        while time.time() - start < limit:
            if ready():
                return
            dead = [p.args for p in self.procs if p.poll() is not None]
            if dead:
                break
            time.sleep(0.2)
        raise RuntimeError(f"Slurm test cluster: no {what} within {limit} s; {self.logs()}")

    def logs(self):
        out = []
        for name in ("munged.out", "munged.log", "slurmctld.out", "slurmctld.log", "slurmd.out", "slurmd.log"):
            try:
                with open(self._path(name)) as f:
                    out.append(f"--- {name}\n{f.read()[-1500:]}")
            except OSError:
                pass
        return "\n".join(out)

    def env(self, extra=None):
        e = dict(os.environ)
        e["SLURM_CONF"] = self._path("slurm.conf")
        e.setdefault("OMP_NUM_THREADS", "1")
        e.update(extra or {})
        return e

    def inside(self, argv):
        return ["nsenter", f"--net=/run/netns/{self.ns}", *argv]

    def run(self, argv, timeout=300, env=None, cwd=None):
        """argv (srun, sbatch, ...) against this cluster: inside its namespace, SLURM_CONF set."""
        p = subprocess.run(self.inside(argv), capture_output=True, text=True,
                           timeout=timeout, env=self.env(env), cwd=cwd)
        return p.returncode, p.stdout, p.stderr

    def down(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []
        # Job steps slurmd started and left behind (a test that failed mid-run).
        pids = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "delete", self.ns], capture_output=True)
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        for sig, h in self._old.items():
            signal.signal(sig, h)
        self._old = {}
