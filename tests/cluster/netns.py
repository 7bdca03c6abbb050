"""Simulated cluster nodes on one Linux machine: N network namespaces joined by veth pairs to a
bridge that lives in a namespace of its own, so the host's network is never touched (every
address and link exists only inside the namespaces). Needs root (ip netns, veth, bridge, tc).

    with Cluster(4) as c:                 # nodes n0..n3 at 10.77.0.1..4/24
        c.shape(1, rate="1gbit")          # tc on node 1's link (netem for delay where the
                                          # kernel has it, tbf for a rate otherwise)
        c.link_down(2)                    # unplug node 2's cable
        rc, out, err = c.run_on(0, argv)  # argv inside node 0 (its own hostname, as a node)
        c.mpirun(8, program, ranks_per_node=2)  # OpenMPI's own remote launch across the nodes

OpenMPI launches its daemons on the other nodes through scripts/netns-agent (ssh's calling
convention; it enters the node's namespace instead of logging in), reading the host -> namespace
map this class writes. mpirun itself runs inside node 0, as it would on a cluster's first node.
Ranks talk over TCP between nodes and shared memory only inside one (btl tcp,self,vader:
OpenMPI uses vader only between processes its own daemon on one node started).

Namespaces are named trid<pid>x<random>-n<i> (and -br): two runs never collide, and one whose
owner process is gone (a test killed with SIGKILL) is a leftover that remove_leftovers() deletes,
killing what still runs inside it. A Cluster removes everything it made on every exit path:
normal exit, an exception, SIGTERM/SIGINT (turned into an exception) and interpreter exit."""
import atexit
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AGENT = os.path.join(REPO, "scripts", "netns-agent")
MPIRUN = os.path.join(REPO, "scripts", "trident-mpirun")
SUBNET = "10.77.0"  # exists only inside this harness's namespaces
NAME_RE = re.compile(r"^trid(\d+)x[0-9a-f]+-(n\d+|br)$")


def _ip(*args, check=True):
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {p.stderr.strip()}")
    return p


def _namespaces():
    out = _ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_inside(ns):
    """SIGKILLs every process still inside namespace ns (processes this harness started there)."""
    pids = _ip("netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    return len(pids)


def _delete(ns):
    _kill_inside(ns)
    _ip("netns", "delete", ns, check=False)


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def leftovers():
    """Namespaces of earlier runs whose owner process no longer exists."""
    return [ns for ns in _namespaces() if (m := NAME_RE.match(ns)) and not _alive(int(m.group(1)))]


def remove_leftovers():
    """Deletes leftovers (killing what still runs in them) and their temporary directories."""
    found = leftovers()
    for ns in found:
        _delete(ns)
    tmp = tempfile.gettempdir()
    for name in os.listdir(tmp):
        m = re.match(r"^trid(\d+)x[0-9a-f]+-", name)
        if m and not _alive(int(m.group(1))):
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
    return found


def require_namespaces():
    """Exits 77 (ctest: skipped) where network namespaces cannot be made (not root), saying why."""
    if os.geteuid() != 0:
        print("skipped: simulated nodes need root (ip netns, veth, bridge)")
        sys.exit(77)
    stale = remove_leftovers()
    if stale:
        print(f"removed leftover namespaces of earlier runs: {' '.join(stale)}")


def eth0_bytes(cluster):
    """Bytes received on each node's link (eth0): traffic that crossed the simulated network."""
    out = []
    for ns in cluster.ns:
        p = subprocess.run(["ip", "netns", "exec", ns, "cat", "/sys/class/net/eth0/statistics/rx_bytes"],
                           capture_output=True, text=True, timeout=30, check=True)
        out.append(int(p.stdout))
    return out


def netem_available():
    """Whether this kernel has tc's netem qdisc (delay, loss); some (e.g. sandbox VMs) lack it."""
    probe = f"trid{os.getpid()}x{secrets.token_hex(3)}-n0"
    _ip("netns", "add", probe)
    try:
        p = subprocess.run(["ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "lo", "root",
                            "netem", "delay", "1ms"], capture_output=True, text=True, timeout=30)
        return p.returncode == 0
    finally:
        _delete(probe)


class Cluster:
    def __init__(self, nodes):
        assert 1 <= nodes <= 200
        self.n = nodes
        self.prefix = f"trid{os.getpid()}x{secrets.token_hex(3)}"
        self.bridge_ns = f"{self.prefix}-br"
        self.ns = [f"{self.prefix}-n{i}" for i in range(nodes)]
        self.names = [f"node{i}" for i in range(nodes)]  # each node's hostname
        self.ips = [f"{SUBNET}.{i + 1}" for i in range(nodes)]
        self.made = []
        self.tmp = None
        self._old_handlers = {}

    # --- lifetime -------------------------------------------------------------------------
    def __enter__(self):
        self.up()
        return self

    def __exit__(self, *exc):
        self.down()
        return False

    def up(self):
        remove_leftovers()
        atexit.register(self.down)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        self.tmp = tempfile.mkdtemp(prefix=f"{self.prefix}-")
        try:
            self._add_ns(self.bridge_ns)
            _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
            for i, ns in enumerate(self.ns):
                self._add_ns(ns)
                # Created directly between the two namespaces: no interface ever exists in the host's.
                _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"v{i}",
                    "netns", self.bridge_ns)
                _ip("-n", self.bridge_ns, "link", "set", f"v{i}", "master", "br0")
                _ip("-n", self.bridge_ns, "link", "set", f"v{i}", "up")
                _ip("-n", ns, "addr", "add", f"{self.ips[i]}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                # A node's TCP gives up on a peer that stopped answering after ~6 s of retransmits
                # (Linux's default, 15 retries, is ~15 minutes), so that mpirun notices a node lost
                # behind a dropped link within a test's time. Per namespace: the host keeps its own.
                subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.tcp_retries2=4"],
                               check=True, capture_output=True, timeout=30)
            with open(self.hosts_file, "w") as f:
                for ip, ns, name in zip(self.ips, self.ns, self.names):
                    f.write(f"{ip} {ns} {name}\n")
        except BaseException:
            self.down()
            raise

    def _add_ns(self, ns):
        _ip("netns", "add", ns)
        self.made.append(ns)

    def _on_signal(self, signum, frame):
        raise SystemExit(128 + signum)  # unwinds through __exit__ / finally blocks

    def down(self):
        for ns in reversed(self.made):
            _delete(ns)
        self.made = []
        if self.tmp:
            subprocess.run(["rm", "-rf", self.tmp])
            self.tmp = None
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers = {}

    def remaining(self):
        """This cluster's namespaces that still exist (empty after down())."""
        return [ns for ns in _namespaces() if ns.startswith(self.prefix)]

    # --- links ----------------------------------------------------------------------------
    def link_down(self, i):
        """Unplugs node i: its veth end on the bridge goes down, so nothing reaches it."""
        _ip("-n", self.bridge_ns, "link", "set", f"v{i}", "down")

    def link_up(self, i):
        _ip("-n", self.bridge_ns, "link", "set", f"v{i}", "up")

    def shape(self, i, rate=None, delay=None):
        """Shapes node i's outgoing link: netem (rate and delay) where the kernel has it, else tbf
        (rate only; a delay then raises, since tbf cannot add one)."""
        tc = ["ip", "netns", "exec", self.ns[i], "tc", "qdisc", "replace", "dev", "eth0", "root"]
        if netem_available():
            cmd = tc + ["netem"] + (["delay", delay] if delay else []) + (["rate", rate] if rate else [])
        else:
            if delay:
                raise RuntimeError("this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM), so no delay; "
                                   "tbf can only limit the rate")
            cmd = tc + ["tbf", "rate", rate, "burst", "64kb", "latency", "50ms"]
        subprocess.run(cmd, check=True, capture_output=True, timeout=30)

    # --- running --------------------------------------------------------------------------
    @property
    def hosts_file(self):
        return os.path.join(self.tmp, "hosts")

    def hostfile(self, slots, nodes=None):
        """A hostfile naming the first `nodes` nodes (all by default) by address, `slots` each."""
        path = os.path.join(self.tmp, "hostfile")
        with open(path, "w") as f:
            for ip in self.ips[:nodes or self.n]:
                f.write(f"{ip} slots={slots}\n")
        return path

    def on_node(self, i, argv):
        """argv as it runs on node i: inside its namespace, with its own hostname."""
        return ["ip", "netns", "exec", self.ns[i], "unshare", "--uts", "sh", "-c",
                'hostname "$0" && exec "$@"', self.names[i], *argv]

    def env(self, extra=None):
        e = dict(os.environ)
        e.setdefault("OMP_NUM_THREADS", "1")
        e["TRIDENT_NETNS_HOSTS"] = self.hosts_file
        e.update(extra or {})
        return e

    def mpirun_argv(self, np, argv, ranks_per_node, map_by="slot", nodes=None, supervisor=(), extra=()):
        """OpenMPI's remote launch of argv as np ranks over the nodes, ranks_per_node slots each,
        from node 0; through scripts/trident-mpirun, so the local settings (root, oversubscription,
        yielding, single copy) hold on every node. supervisor: its options (--max-restarts ...)."""
        subnet = f"{SUBNET}.0/24"
        launch = [MPIRUN, *supervisor, "-n", str(np), "--hostfile", self.hostfile(ranks_per_node, nodes),
                  "--map-by", map_by,
                  "--mca", "plm_rsh_agent", AGENT,
                  # Every daemon straight from mpirun: an agent inside a node need not reach others.
                  "--mca", "plm_rsh_no_tree_spawn", "1",
                  "--mca", "btl_tcp_if_include", subnet, "--mca", "oob_tcp_if_include", subnet,
                  # Notice a daemon behind a dead link in seconds (defaults: 300 s idle + 9 x 20 s).
                  "--mca", "oob_tcp_keepalive_time", "5", "--mca", "oob_tcp_keepalive_intvl", "1",
                  "--mca", "oob_tcp_keepalive_probes", "3",
                  *extra, *argv]
        return self.on_node(0, launch)

    def run(self, argv, timeout=300, env=None):
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=self.env(env))
        return p.returncode, p.stdout, p.stderr

    def mpirun(self, np, argv, ranks_per_node, map_by="slot", nodes=None, timeout=300, env=None, extra=()):
        return self.run(self.mpirun_argv(np, argv, ranks_per_node, map_by, nodes, extra=extra), timeout, env)


if __name__ == "__main__":
    # Manual use: `python3 tests/cluster/netns.py leftovers` lists (and removes) leftovers.
    if sys.argv[1:] == ["leftovers"]:
        print("\n".join(remove_leftovers()) or "none")
