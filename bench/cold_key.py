#!/usr/bin/env python3
"""Measures how well a global rate limit holds on the first burst of a cold key (issue 18).

Starts 3 `meridian run` processes on loopback (one cluster, three regions) in front of a tiny
upstream, with a route limited to LIMIT per WINDOW (key: header:x-key, scope: global). Each run
uses a key nobody has seen and sends REQUESTS requests spread evenly over SECONDS, split
60/30/10 across the three nodes (one keep-alive client thread per node), and counts the 200s.
Each burst starts 100 ms into a window (rate-limit windows are aligned to Unix time multiples of
the window; a burst that crossed a boundary would be measured against two windows, the sliding
estimate letting the old one's count fade). Prints each run's admissions and the error against
the limit, then min/median/max.

With --mode strict the limit is `mode: strict` (on_partition: fail_closed): every node asks the
key's owner. The client-side latency of every request (p50/p99 over all runs) is printed for
either mode; run both to see what asking the owner adds.

  bench/cold_key.py [--runs 20] [--limit 200] [--window 10s] [--requests 600] [--seconds 4]
                    [--mode eventual|strict] [--bin build/bin/meridian]
"""
import argparse
import http.client
import http.server
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

TOKEN = "bench-token-0123456789abcdef"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # One write per response: head and body written apart meet Nagle and the proxy's delayed
    # ACK, and every response would take 40 ms.
    wbufsize = 1 << 16

    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def start_cluster(binary, tmp, upstream_port, limit, window, mode="eventual"):
    with open(f"{tmp}/admin.token", "w") as f:
        f.write(TOKEN + "\n")
    os.chmod(f"{tmp}/admin.token", 0o600)
    with open(f"{tmp}/cluster.keys", "w") as f:
        f.write(subprocess.run([binary, "keygen"], capture_output=True, text=True).stdout)
    os.chmod(f"{tmp}/cluster.keys", 0o600)
    ports = [{"proxy": free_port(), "admin": free_port(), "gossip": free_port()} for _ in range(3)]
    seeds = ", ".join(f"127.0.0.1:{p['gossip']}" for p in ports)
    nodes = []
    extra = ", mode: strict, on_partition: fail_closed" if mode == "strict" else ""
    for i, (p, region) in enumerate(zip(ports, ("eu-west", "us-east", "ap-south"))):
        with open(f"{tmp}/n{i}.yaml", "w") as f:
            f.write(f"""node: {{id: n{i}, region: {region}, data_dir: {tmp}/d{i}}}
listen: {{proxy: 127.0.0.1:{p['proxy']}, admin: 127.0.0.1:{p['admin']}}}
admin: {{token_file: {tmp}/admin.token}}
log: {{level: warn}}
cluster: {{bind: 127.0.0.1:{p['gossip']}, seeds: [{seeds}], keyring_file: {tmp}/cluster.keys}}
upstreams:
  - name: up
    targets: [127.0.0.1:{upstream_port}]
routes:
  - name: limited
    match: {{path_prefix: /}}
    upstream: up
    rate_limit: {{limit: {limit}, window: {window}, key: "header:x-key", scope: global{extra}}}
""")
        nodes.append(subprocess.Popen([binary, "run", "--config", f"{tmp}/n{i}.yaml"],
                                      stderr=subprocess.DEVNULL))
    for p in ports:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(
                        urllib.request.Request(f"http://127.0.0.1:{p['admin']}/cluster/members",
                                               headers={"Authorization": "Bearer " + TOKEN}),
                        timeout=1) as r:
                    if r.read().count(b'"alive"') >= 3:
                        break
            except OSError:
                pass
            time.sleep(0.1)
    return nodes, ports


def burst(ports, key, requests, seconds, latencies=None):
    shares = (0.6, 0.3, 0.1)
    admitted = [0, 0, 0]
    lat = [[], [], []]

    def client(i):
        n = round(requests * shares[i])
        conn = http.client.HTTPConnection("127.0.0.1", ports[i]["proxy"], timeout=10)
        start = time.monotonic()
        for k in range(n):
            # Spread evenly over the period, each node's requests interleaved with the others'.
            target = start + seconds * (k + 0.5) / n
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent = time.monotonic()
            conn.request("GET", "/x", headers={"x-key": key})
            r = conn.getresponse()
            r.read()
            lat[i].append(time.monotonic() - sent)
            if r.status == 200:
                admitted[i] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if latencies is not None:
        for part in lat:
            latencies.extend(part)
    return sum(admitted), admitted


def parse_ms(text):
    units = {"ms": 1, "s": 1000, "m": 60000, "h": 3600000}
    for u in ("ms", "s", "m", "h"):
        if text.endswith(u):
            return int(float(text[: -len(u)]) * units[u])
    return int(text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--window", default="10s")
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--bin", default="build/bin/meridian")
    ap.add_argument("--mode", choices=("eventual", "strict"), default="eventual")
    a = ap.parse_args()
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    tmp = tempfile.mkdtemp(prefix="meridian-cold-key-")
    nodes, ports = start_cluster(os.path.abspath(a.bin), tmp, upstream.server_address[1], a.limit,
                                 a.window, a.mode)
    window_ms = parse_ms(a.window)
    if a.seconds * 1000 + 200 > window_ms:
        print("the burst must fit in one window", file=sys.stderr)
        return 2
    totals = []
    latencies = []
    try:
        for run in range(a.runs):
            # Start 100 ms into the next window.
            now = time.time() * 1000
            start = (now // window_ms + 1) * window_ms + 100
            time.sleep((start - now) / 1000)
            total, by_node = burst(ports, f"cold-{os.getpid()}-{run}", a.requests, a.seconds,
                                   latencies)
            totals.append(total)
            print(f"run {run + 1:2d}: admitted {total} of {a.requests} (limit {a.limit}, "
                  f"{100.0 * (total - a.limit) / a.limit:+.1f} %), by node {by_node}", flush=True)
    finally:
        for n in nodes:
            n.terminate()
        for n in nodes:
            n.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    errors = [100.0 * (t - a.limit) / a.limit for t in totals]
    print(f"admitted: min {min(totals)} median {statistics.median(totals)} max {max(totals)}; "
          f"error: min {min(errors):+.1f} % max {max(errors):+.1f} % (limit {a.limit}, {a.mode})")
    latencies.sort()
    pick = lambda q: 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))]
    print(f"latency ({len(latencies)} requests, client side): p50 {pick(0.5):.2f} ms "
          f"p99 {pick(0.99):.2f} ms max {1000 * latencies[-1]:.2f} ms")


if __name__ == "__main__":
    sys.exit(main())
