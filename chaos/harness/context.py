"""One scenario's run: the cluster, what was injected when, what was observed, and the verdicts."""
import os
import subprocess
import threading
import time

from . import cluster as cl

# Bounds. Each is what a correct cluster must do on this topology (3 regions, 40-80 ms one-way
# between them, 1 s probe interval, Lifeguard suspicion timeouts), not what a run measured.
# Admitted per window <= limit x (1 + EPSILON). The limiter's documented overshoot is about
# (N-1)/N x d/W per window (docs/architecture.md, "Rate limiting"): with N = 3, a sync delay d of
# ~250 ms across these regions and W = 5 s that is ~3.3 %.
EPSILON = 0.05
# One-way delay between regions (userspace, delayd.py) and its jitter.
DELAYS_MS = {("eu-west", "us-east"): 40, ("eu-west", "ap-south"): 80, ("us-east", "ap-south"): 60}
JITTER_MS = 5
CONVERGE_S = 10.0            # every node sees every node alive again after a heal or restart
DETECT_S = 15.0              # a killed or paused node is seen dead/suspect by all others
CONFIG_S = 15.0              # every acknowledged config change is on every node after the heal
BREAKER_OPEN_S = 5.0         # a failing upstream's breaker is open on every node
BREAKER_CLOSE_S = 10.0       # ... and closed everywhere after the upstream recovers
SUCCESS_RATE = 0.999         # /ok on nodes not under fault
MEMORY_MIB = 128             # resident set of every node, whole run
FAULT_GRACE_MS = 3000        # a node stays "under fault" this long after its fault ends

# What each on_partition policy allows the whole cluster per window during a partition, as a
# multiple of the limit (sides = number of groups that cannot see each other).
PARTITION_ALLOWANCE = {
    "local_share": lambda sides: 1.0,
    "fail_open": lambda sides: float(sides),
    "fail_closed": lambda sides: 1.0,
}


class Context:
    def __init__(self, name, topo, binary, workdir, log):
        self.name = name
        self.topo = topo
        self.log = log
        self.cluster = cl.Cluster(topo, binary, workdir)
        self.t0 = time.time()
        self.verdicts = []
        self.events = []      # (unix s, text)
        self.faults = []      # {"kind", "nodes", "start", "end", "sides"}
        self.samples = []     # {"t", "node", "alive", "suspect", "dead", "breakers", "rss"}
        self.crashes = []     # (unix s, node id, exit code)
        self.acked = {}       # route name -> (node id, unix s, body)
        self.write_failures = 0
        self.load_window = None  # (start, end) unix s
        self._stop = threading.Event()
        self._threads = []
        self.write_targets = None  # node ids the config writer uses (default: all)
        self.mounts = []  # tmpfs mounts to remove at the end

    # ---- story helpers -------------------------------------------------------------------

    def at(self, seconds):
        """Waits until `seconds` after the scenario's start (its load start when running)."""
        base = self.load_window[0] if self.load_window else self.t0
        delay = base + seconds - time.time()
        if delay > 0:
            time.sleep(delay)

    def event(self, text):
        self.events.append((time.time(), text))
        self.log(f"  [{time.time() - (self.load_window or (self.t0,))[0]:6.1f}s] {text}")

    def fault(self, kind, nodes, sides=1):
        f = {"kind": kind, "nodes": list(nodes), "start": time.time(), "end": None,
             "sides": sides}
        self.faults.append(f)
        self.event(f"fault: {kind} on {', '.join(nodes)}")
        return f

    def end_fault(self, f):
        f["end"] = time.time()
        self.event(f"healed: {f['kind']}")

    def verdict(self, invariant, measured, bound, ok):
        v = {"scenario": self.name, "invariant": invariant, "measured": measured, "bound": bound,
             "verdict": "PASS" if ok else "FAIL"}
        self.verdicts.append(v)
        self.log(f"  {v['verdict']}  {invariant}: {measured} (bound {bound})")
        return ok

    # ---- start and stop ------------------------------------------------------------------

    def start(self, works=("/limited=100:2", "/strict=150:8", "/ok=30:1", "/flaky=20:1"),
              write_config=True,
              works_by_node=None, before_load=None):
        c = self.cluster
        c.start_upstreams()
        for n in c.nodes:
            n.start()
        took = c.wait_converged(30)
        if took is None:
            raise RuntimeError("the cluster did not form within 30 s")
        self.event(f"cluster formed in {took:.1f} s")
        if before_load:
            before_load()
        self._spawn(self._sample_loop)
        c.start_load(list(works), works_by_node)
        self.load_window = (time.time(), None)
        if write_config:
            self._spawn(self._write_loop)

    def stop_load(self):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        self.cluster.stop_load()
        self.load_window = (self.load_window[0], time.time())

    def shutdown(self):
        if not self._stop.is_set():
            self._stop.set()
            for t in self._threads:
                t.join(timeout=10)
        self.cluster.stop_all()
        for m in self.mounts:
            subprocess.run(["umount", "-l", m], check=False)

    def _spawn(self, fn):
        t = threading.Thread(target=fn, daemon=True)
        t.start()
        self._threads.append(t)

    def _sample_loop(self):
        while not self._stop.wait(0.5):
            self.sample_once()

    def sample_once(self):
        now = time.time()
        for n in self.cluster.nodes:
            if n.proc is not None and n.proc.poll() is not None and not n.expect_exit:
                self.crashes.append((now, n.id, n.proc.returncode))
                self.event(f"CRASH: {n.id} exited with {n.proc.returncode}")
                n.expect_exit = True  # report once
            row = {"t": now, "node": n.id, "alive": None, "suspect": None, "dead": None,
                   "breakers": {}, "rss": n.rss_bytes(), "view": None}
            if n.running():
                view = self.cluster.members_view(n)
                if view is not None:
                    row["view"] = view
                    states = list(view.values())
                    row["alive"] = states.count("alive")
                    row["suspect"] = states.count("suspect")
                    row["dead"] = states.count("dead")
                    status, body = n.try_admin("GET", "/breakers")
                    if status == 200:
                        for b in body.get("breakers", []):
                            if b.get("upstream") == "flaky":
                                row["breakers"][b["target"]] = b["state"]
            self.samples.append(row)

    def _write_loop(self):
        """Config changes during faults: a new route every 0.4 s, round-robin over the nodes."""
        i = 0
        while not self._stop.wait(0.4):
            nodes = [n for n in self.cluster.nodes
                     if self.write_targets is None or n.id in self.write_targets]
            n = nodes[i % len(nodes)]
            i += 1
            name = f"w{i}"
            body = {"match": {"path": f"/chaos/{name}"}, "upstream": "healthy"}
            status, _ = n.try_admin("PUT", f"/config/routes/{name}", body, timeout=1.0)
            if status == 200:
                self.acked[name] = (n.id, time.time(), body)
            else:
                self.write_failures += 1

    # ---- fault bookkeeping ----------------------------------------------------------------

    def under_fault(self, node_id, t):
        for f in self.faults:
            end = f["end"] if f["end"] is not None else float("inf")
            if node_id in f["nodes"] and f["start"] <= t <= end + FAULT_GRACE_MS / 1000:
                return True
        return False

    def any_fault(self, t):
        """Whether any fault was on at Unix time t (or ended less than FAULT_GRACE_MS before)."""
        for f in self.faults:
            end = f["end"] if f["end"] is not None else float("inf")
            if f["start"] <= t <= end + FAULT_GRACE_MS / 1000:
                return True
        return False

    def partition_sides(self, t0, t1):
        """Returns the most sides any partition overlapping [t0, t1) had (1 = no partition)."""
        sides = 1
        for f in self.faults:
            end = f["end"] if f["end"] is not None else float("inf")
            if f["sides"] > 1 and f["start"] < t1 and end + FAULT_GRACE_MS / 1000 > t0:
                sides = max(sides, f["sides"])
        return sides

    def workdir(self):
        return self.cluster.workdir

    def file(self, name):
        return os.path.join(self.cluster.workdir, name)
