"""The chaos topology: network namespaces, a bridge per region, a routed core with userspace delay.

    core namespace  <prefix>-core
      bridge <prefix>b<i> 10.88.<i>.1/24 per region      (the region's LAN)
      veth   <prefix>v<k>  -> node namespace <prefix>-n<k> as eth0, 10.88.<i>.<10+k>/24
      tun    <prefix>t    every packet routed between bridges goes through delayd.py and back

Faults are rules in the core namespace: iptables DROP for partitions (per direction), iptables
`-m statistic` for random loss, `tc tbf` on a node's veth for a bandwidth cap. Every name starts
with the prefix `mc<pid>`, so a later run can find and remove what an interrupted run left
(`cleanup_stale`).
"""
import ctypes
import os
import re
import subprocess
import sys
import threading
import queue as queue_mod

SUBNET = "10.88"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def sh(*args, check=True, quiet=False):
    """Runs a command; raises with its stderr when it fails and check is set."""
    proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def nsexec(ns, *args, check=True):
    return sh("ip", "netns", "exec", ns, *args, check=check)


class NsThread:
    """A thread living in one network namespace: sockets it opens belong to that namespace.

    Use call(fn, *args) to run fn there and get its result (exceptions are re-raised)."""

    def __init__(self, ns):
        self.ns = ns
        self.jobs = queue_mod.Queue()
        ready = threading.Event()
        self.error = None

        def loop():
            try:
                fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {ns}")
                os.close(fd)
            except OSError as e:
                self.error = e
            ready.set()
            while True:
                job = self.jobs.get()
                if job is None:
                    return
                fn, args, box, done = job
                try:
                    box.append((True, fn(*args)))
                except Exception as e:  # handed back to the caller
                    box.append((False, e))
                done.set()

        self.thread = threading.Thread(target=loop, daemon=True, name=f"ns-{ns}")
        self.thread.start()
        ready.wait()
        if self.error:
            raise self.error

    def call(self, fn, *args):
        box, done = [], threading.Event()
        self.jobs.put((fn, args, box, done))
        done.wait()
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def close(self):
        self.jobs.put(None)


class Host:
    """One node namespace: the meridian node of a region lives here with its upstream and client."""

    def __init__(self, topo, index, region_index, region):
        self.index = index
        self.region = region
        self.region_index = region_index
        self.ns = f"{topo.prefix}-n{index}"
        self.ip = f"{SUBNET}.{region_index}.{10 + index}"
        self.veth = f"{topo.prefix}v{index}"
        self._thread = None

    @property
    def thread(self):
        if self._thread is None:
            self._thread = NsThread(self.ns)
        return self._thread


class Topology:
    def __init__(self, prefix, regions, nodes_per_region=1, delays_ms=None, jitter_ms=0.0):
        self.prefix = prefix
        self.regions = list(regions)
        self.core = f"{prefix}-core"
        self.tun = f"{prefix}t"
        self.delays_ms = delays_ms or {}
        self.jitter_ms = jitter_ms
        self.hosts = []
        for r, region in enumerate(self.regions):
            for _ in range(nodes_per_region):
                self.hosts.append(Host(self, len(self.hosts), r, region))
        self.delayd = None
        self.rules = []  # iptables rule specs currently installed in the core FORWARD chain

    def bridge(self, region_index):
        return f"{self.prefix}b{region_index}"

    def subnet(self, region_index):
        return f"{SUBNET}.{region_index}.0/24"

    def region_index(self, region):
        return self.regions.index(region)

    def create(self):
        c = self.core
        sh("ip", "netns", "add", c)
        nsexec(c, "ip", "link", "set", "lo", "up")
        nsexec(c, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        nsexec(c, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0")
        nsexec(c, "sysctl", "-qw", "net.ipv4.conf.default.rp_filter=0")
        for r in range(len(self.regions)):
            br = self.bridge(r)
            nsexec(c, "ip", "link", "add", br, "type", "bridge")
            nsexec(c, "ip", "addr", "add", f"{SUBNET}.{r}.1/24", "dev", br)
            nsexec(c, "ip", "link", "set", br, "up")
        for h in self.hosts:
            sh("ip", "netns", "add", h.ns)
            nsexec(h.ns, "ip", "link", "set", "lo", "up")
            sh("ip", "link", "add", h.veth, "netns", c, "type", "veth", "peer", "name", "eth0",
               "netns", h.ns)
            nsexec(c, "ip", "link", "set", h.veth, "master", self.bridge(h.region_index), "up")
            nsexec(h.ns, "ip", "addr", "add", f"{h.ip}/24", "dev", "eth0")
            nsexec(h.ns, "ip", "link", "set", "eth0", "up")
            nsexec(h.ns, "ip", "route", "add", "default", "via", f"{SUBNET}.{h.region_index}.1")
        # Inter-region packets: every bridge's routed traffic goes through the TUN (table 100);
        # what delayd writes back enters via the TUN and uses the main table (the bridges).
        here = os.path.dirname(os.path.abspath(__file__))
        cmd = ["ip", "netns", "exec", c, sys.executable, os.path.join(here, "delayd.py"),
               "--tun", self.tun, "--jitter", str(self.jitter_ms)]
        for r, region in enumerate(self.regions):
            cmd += ["--region", f"{self.subnet(r)}={region}"]
        for (a, b), ms in self.delays_ms.items():
            cmd += ["--delay", f"{a},{b}={ms}"]
        self.delayd = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        for _ in range(100):
            if nsexec(c, "ip", "link", "show", self.tun, check=False):
                break
            threading.Event().wait(0.05)
        nsexec(c, "ip", "link", "set", self.tun, "up")
        nsexec(c, "sysctl", "-qw", f"net.ipv4.conf.{self.tun}.rp_filter=0")
        nsexec(c, "ip", "route", "add", "default", "dev", self.tun, "table", "100")
        for r in range(len(self.regions)):
            nsexec(c, "ip", "rule", "add", "iif", self.bridge(r), "table", "100")

    def destroy(self):
        for h in self.hosts:
            if h._thread:
                h._thread.close()
        if self.delayd and self.delayd.poll() is None:
            self.delayd.kill()
            self.delayd.wait()
        for ns in [h.ns for h in self.hosts] + [self.core]:
            kill_namespace(ns)

    # ---- faults ---------------------------------------------------------------------------

    def _rule(self, spec, add=True):
        nsexec(self.core, "iptables", "-w", "-I" if add else "-D", "FORWARD", *spec)
        if add:
            self.rules.append(spec)
        else:
            self.rules.remove(spec)

    def block(self, from_region, to_region):
        """Drops every packet from from_region to to_region (one direction)."""
        a, b = self.region_index(from_region), self.region_index(to_region)
        spec = ["-i", self.bridge(a), "-d", self.subnet(b), "-j", "DROP"]
        self._rule(spec)
        return spec

    def isolate(self, region):
        """Partitions region from every other region, both directions."""
        specs = []
        for other in self.regions:
            if other != region:
                specs.append(self.block(region, other))
                specs.append(self.block(other, region))
        return specs

    def loss(self, probability, region=None):
        """Drops each inter-region packet leaving region (every region when None) with probability."""
        specs = []
        for r, name in enumerate(self.regions):
            if region is None or name == region:
                spec = ["-i", self.bridge(r), "-m", "statistic", "--mode", "random",
                        "--probability", f"{probability:.4f}", "-j", "DROP"]
                self._rule(spec)
                specs.append(spec)
        return specs

    def heal(self, specs=None):
        for spec in list(self.rules if specs is None else specs):
            self._rule(spec, add=False)

    def bandwidth(self, host, rate):
        """Caps the host's traffic in both directions to rate (tc syntax: 256kbit)."""
        tbf = ["tbf", "rate", rate, "burst", "16kbit", "latency", "200ms"]
        nsexec(self.core, "tc", "qdisc", "replace", "dev", host.veth, "root", *tbf)
        nsexec(host.ns, "tc", "qdisc", "replace", "dev", "eth0", "root", *tbf)

    def unbandwidth(self, host):
        nsexec(self.core, "tc", "qdisc", "del", "dev", host.veth, "root", check=False)
        nsexec(host.ns, "tc", "qdisc", "del", "dev", "eth0", "root", check=False)


def kill_namespace(ns):
    """Kills every process in the namespace, then deletes it (veths and bridges go with it)."""
    pids = sh("ip", "netns", "pids", ns, check=False).split()
    for pid in pids:
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            pass
    sh("ip", "netns", "del", ns, check=False)


def cleanup_stale(log=print):
    """Removes namespaces left by chaos runs whose runner process is gone."""
    removed = 0
    for line in sh("ip", "netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(r"^mc(\d+)-", name)
        if not m:
            continue
        if os.path.exists(f"/proc/{m.group(1)}") and int(m.group(1)) != os.getpid():
            continue  # another live run
        kill_namespace(name)
        removed += 1
    if removed:
        log(f"chaos: removed {removed} namespaces left by an interrupted run")
