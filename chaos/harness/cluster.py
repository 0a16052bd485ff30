"""meridian nodes, upstreams and load clients as real processes in the topology's namespaces."""
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROXY_PORT, ADMIN_PORT, GOSSIP_PORT, UPSTREAM_PORT = 8080, 9901, 7946, 9000

# The rate-limited routes every scenario loads: a global quota shared by all regions, decided
# by every node (/limited, on_partition local_share) and by the key's owner (/strict, mode
# strict, on_partition fail_closed).
LIMIT, WINDOW_MS = 500, 5000
# Cold-key bursts (chaos/accuracy.py): a limit per header value, one fresh value per burst.
BURST_LIMIT, BURST_WINDOW_MS = 200, 10000


def node_config(host, hosts, data_dir, token_file, keyring, clock_offset_ms=0):
    """Returns the YAML of one node: the same routes and upstreams everywhere (seeded documents)."""
    targets = ", ".join(f"{{address: {h.ip}:{UPSTREAM_PORT}, region: {h.region}}}" for h in hosts)
    seeds = ", ".join(f"{h.ip}:{GOSSIP_PORT}" for h in hosts if h is not host)
    offset = f", clock_offset: {clock_offset_ms}ms" if clock_offset_ms else ""
    return f"""node: {{id: {node_id(host)}, region: {host.region}, data_dir: {data_dir}, workers: 1{offset}}}
listen: {{proxy: 0.0.0.0:{PROXY_PORT}, admin: 0.0.0.0:{ADMIN_PORT}}}
admin: {{token_file: {token_file}}}
cluster:
  bind: {host.ip}:{GOSSIP_PORT}
  seeds: [{seeds}]
  keyring_file: {keyring}
log: {{level: warn}}
upstreams:
  - name: healthy
    targets: [{targets}]
    timeouts: {{connect: 500ms, request: 5s}}
    retries: {{attempts: 2, on: [connect_failure, 502, 503, 504]}}
  - name: flaky
    targets: [{targets}]
    timeouts: {{connect: 500ms, request: 5s}}
    circuit_breaker: {{failure_rate: 0.5, min_requests: 10, window: 5s, open_for: 3s,
                      half_open_probes: 1, scope: cluster}}
routes:
  - name: ok
    match: {{path_prefix: /ok}}
    upstream: healthy
  - name: limited
    match: {{path_prefix: /limited}}
    upstream: healthy
    rate_limit: {{limit: {LIMIT}, window: {WINDOW_MS}ms, key: global, scope: global,
                 on_partition: local_share}}
  - name: flaky
    match: {{path_prefix: /flaky}}
    upstream: flaky
  - name: strict
    match: {{path_prefix: /strict}}
    upstream: healthy
    rate_limit: {{limit: {LIMIT}, window: {WINDOW_MS}ms, key: global, scope: global, mode: strict,
                 on_partition: fail_closed}}
  - name: burst-eventual
    match: {{path_prefix: /burst/e}}
    upstream: healthy
    rate_limit: {{limit: {BURST_LIMIT}, window: {BURST_WINDOW_MS}ms, key: "header:x-key",
                 scope: global}}
  - name: burst-strict
    match: {{path_prefix: /burst/s}}
    upstream: healthy
    rate_limit: {{limit: {BURST_LIMIT}, window: {BURST_WINDOW_MS}ms, key: "header:x-key",
                 scope: global, mode: strict, on_partition: fail_closed}}
"""


def decided_windows(rows, path, window_ms=None, slack_ms=500):
    """{window start (Unix ms): 2xx answers the limit decided in that window} for path, from the
    load clients' rows: a row's completion bucket t and an answer's RateLimit-Reset r (seconds,
    rounded up) put the window's end in [t + (r - 1) s - slack, t + 100 ms + r s), which holds one
    multiple of the window when the window is longer than r's rounding plus the slack (an answer
    decided more than slack_ms before it completed is counted as if decided at completion)."""
    window_ms = window_ms or WINDOW_MS
    out = {}
    for r in rows:
        if r["path"] != path:
            continue
        resets = r.get("reset") or {}
        counted = 0
        for reset, n in resets.items():
            reset = int(reset)
            low = r["t"] + (reset - 1) * 1000 - slack_ms
            end = -(-low // window_ms) * window_ms  # the first window end at or after low
            out[end - window_ms] = out.get(end - window_ms, 0) + n
            counted += n
        if r["s2xx"] > counted:  # answers without the header: by completion time
            w = r["t"] // window_ms * window_ms
            out[w] = out.get(w, 0) + r["s2xx"] - counted
    return out


def node_id(host):
    return f"{host.region}-{host.index}"


def http_call(method, port, path, body=None, token=None, timeout=2.0):
    """Runs in a namespace thread: one HTTP request to 127.0.0.1:port. Returns (status, json|text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw.decode(errors="replace")
    finally:
        conn.close()


class Node:
    """One meridian process. start/kill/pause/resume/terminate; admin() talks to its admin API."""

    def __init__(self, cluster, host):
        self.cluster = cluster
        self.host = host
        self.id = node_id(host)
        self.dir = os.path.join(cluster.workdir, self.id)
        self.data_dir = os.path.join(self.dir, "data")
        self.config_path = os.path.join(self.dir, "node.yaml")
        self.proc = None
        self.expect_exit = False  # set before an injected kill or stop
        self.exits = []  # (time, returncode, expected)
        self.clock_offset_ms = 0
        os.makedirs(self.data_dir, exist_ok=True)

    def write_config(self):
        c = self.cluster
        with open(self.config_path, "w") as f:
            f.write(node_config(self.host, c.topo.hosts, self.data_dir, c.token_file, c.keyring,
                                self.clock_offset_ms))

    def start(self):
        self.write_config()
        log = open(os.path.join(self.dir, "node.log"), "ab")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.host.ns, self.cluster.binary, "run", "--config",
             self.config_path], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.expect_exit = False

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        if self.running():
            self.proc.send_signal(sig)

    def kill9(self):
        self.expect_exit = True
        self.signal(signal.SIGKILL)
        self.reap(5)

    def terminate(self, timeout=15):
        """Sends SIGTERM (drain) and waits; returns the exit code (None if it did not exit)."""
        self.expect_exit = True
        self.signal(signal.SIGTERM)
        return self.reap(timeout)

    def reap(self, timeout):
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self.exits.append((time.time(), code, True))
        return code

    def rss_bytes(self):
        if not self.running():
            return None
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def admin(self, method, path, body=None, timeout=2.0):
        return self.host.thread.call(http_call, method, ADMIN_PORT, path, body,
                                     self.cluster.token, timeout)

    def try_admin(self, method, path, body=None, timeout=1.0):
        """Like admin() but returns (None, error text) when the node does not answer."""
        try:
            return self.admin(method, path, body, timeout)
        except (OSError, http.client.HTTPException) as e:
            return None, str(e)


class Cluster:
    """The nodes of one scenario plus an upstream and a load client per node."""

    def __init__(self, topo, binary, workdir):
        self.topo = topo
        self.binary = binary
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.token = "chaos-" + os.urandom(12).hex()
        self.token_file = os.path.join(workdir, "admin.token")
        with open(self.token_file, "w") as f:
            f.write(self.token + "\n")
        os.chmod(self.token_file, 0o600)
        self.keyring = os.path.join(workdir, "cluster.keys")
        key = subprocess.run([binary, "keygen"], check=True, stdout=subprocess.PIPE,
                             text=True).stdout.strip()
        with open(self.keyring, "w") as f:
            f.write(key + "\n")
        os.chmod(self.keyring, 0o600)
        self.nodes = [Node(self, h) for h in topo.hosts]
        self.upstreams = []
        self.loadgens = {}
        self.load_files = {}

    def node(self, node_id):
        return next(n for n in self.nodes if n.id == node_id)

    def start_upstreams(self):
        for h in self.topo.hosts:
            self.upstreams.append(subprocess.Popen(
                ["ip", "netns", "exec", h.ns, sys.executable, os.path.join(HERE, "upstream.py"),
                 "--listen", f"0.0.0.0:{UPSTREAM_PORT}", "--name", node_id(h)],
                stdin=subprocess.DEVNULL))

    def set_flaky(self, host, failing):
        return host.thread.call(http_call, "POST", UPSTREAM_PORT,
                                f"/__chaos/flaky?fail={1 if failing else 0}")

    def start_load(self, works, works_by_node=None):
        """Starts one load client per node namespace, against that node's proxy
        (works_by_node: node id -> works for nodes that differ)."""
        for n in self.nodes:
            out = os.path.join(n.dir, "load.jsonl")
            self.load_files[n.id] = out
            cmd = ["ip", "netns", "exec", n.host.ns, sys.executable,
                   os.path.join(HERE, "loadgen.py"), "--target", f"127.0.0.1:{PROXY_PORT}",
                   "--out", out]
            for w in (works_by_node or {}).get(n.id, works):
                cmd += ["--work", w]
            self.loadgens[n.id] = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)

    def stop_load(self):
        for p in self.loadgens.values():
            p.send_signal(signal.SIGTERM)
        for p in self.loadgens.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()

    def read_load(self):
        """Returns {node_id: [rows]} of the load clients' 100 ms buckets."""
        out = {}
        for node, path in self.load_files.items():
            rows = []
            if os.path.exists(path):
                with open(path) as f:
                    for line in f:
                        try:
                            rows.append(json.loads(line))
                        except ValueError:
                            pass
            out[node] = rows
        return out

    def stop_all(self):
        self.stop_load()
        for n in self.nodes:
            if n.running():
                n.expect_exit = True
                n.signal(signal.SIGCONT)
                n.signal(signal.SIGTERM)
        for n in self.nodes:
            if n.proc is not None and n.running() and n.reap(10) is None:
                n.proc.kill()
                n.proc.wait()
        for p in self.upstreams:
            p.kill()
            p.wait()

    # ---- views ----------------------------------------------------------------------------

    def members_view(self, n):
        """Returns {member_id: state} as node n sees it, or None when it does not answer."""
        status, body = n.try_admin("GET", "/cluster/members")
        if status != 200 or not isinstance(body, dict):
            return None
        return {m["id"]: m["state"] for m in body.get("members", [])}

    def converged(self, running_only=True):
        """True when every running node sees every node alive."""
        ids = {n.id for n in self.nodes}
        for n in self.nodes:
            if running_only and not n.running():
                return False
            view = self.members_view(n)
            if view is None or {i for i, s in view.items() if s == "alive"} != ids:
                return False
        return True

    def wait_converged(self, limit_s):
        """Polls until converged; returns the seconds it took, or None past limit_s."""
        start = time.time()
        while time.time() - start < limit_s:
            if self.converged():
                return time.time() - start
            time.sleep(0.1)
        return None
