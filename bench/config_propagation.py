#!/usr/bin/env python3
"""Measures how long a config change takes to reach every node's data plane.

Starts N `meridian run` processes on loopback (one cluster, three regions), then PUTs routes
one at a time, each through a different node's admin API, and times how long until every
node's proxy serves the new route. Prints one JSON line with the percentiles.

  bench/config_propagation.py [--nodes 5] [--puts 100] [--bin build/bin/meridian]

With --bulk N it instead loads N routes through the admin APIs with --clients concurrent
clients (keep-alive connections, spread over the nodes) and prints how long the PUTs took and
how long after the last one every node's data plane served all N (issue 15: 10,000 in 30 s).

  bench/config_propagation.py --nodes 3 --bulk 10000 --clients 8
"""
import http.client
import argparse
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

TOKEN = "bench-token-0123456789abcdef"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, body=None, token=True, timeout=2):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=body.encode() if body is not None else None)
    if token:
        req.add_header("Authorization", f"Bearer {TOKEN}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


class Backend(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def percentile(values, p):
    v = sorted(values)
    rank = max(1, min(len(v), int(-(-p * len(v) // 100))))
    return v[rank - 1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--puts", type=int, default=100)
    ap.add_argument("--bin", default="build/bin/meridian")
    ap.add_argument("--bulk", type=int, default=0)
    ap.add_argument("--clients", type=int, default=8)
    a = ap.parse_args()

    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    tmp = tempfile.mkdtemp(prefix="meridian-bench-")
    procs = []
    try:
        key = subprocess.check_output([a.bin, "keygen"], text=True).strip()
        open(os.path.join(tmp, "cluster.keys"), "w").write(key + "\n")
        open(os.path.join(tmp, "admin.token"), "w").write(TOKEN + "\n")
        ports = [(free_port(), free_port(), free_port()) for _ in range(a.nodes)]
        seeds = ", ".join(f"127.0.0.1:{p[2]}" for p in ports[:2])
        regions = ["eu-west", "us-east", "ap-south"]
        for i, (proxy, admin, gossip) in enumerate(ports):
            cfg = os.path.join(tmp, f"n{i}.yaml")
            open(cfg, "w").write(
                f"node: {{id: n{i}, region: {regions[i % 3]}, data_dir: {tmp}/n{i}}}\n"
                f"listen: {{proxy: 127.0.0.1:{proxy}, admin: 127.0.0.1:{admin}}}\n"
                f"admin: {{token_file: {tmp}/admin.token}}\n"
                f"log: {{level: {os.environ.get('BENCH_LOG', 'warn')}}}\n"
                f"cluster: {{bind: 127.0.0.1:{gossip}, seeds: [{seeds}], "
                f"keyring_file: {tmp}/cluster.keys}}\n")
            log = open(os.path.join(tmp, f"n{i}.log"), "w")
            procs.append(subprocess.Popen([a.bin, "run", "--config", cfg], stdout=log, stderr=log))
        deadline = time.time() + 20
        while time.time() < deadline:
            alive = 0
            for _, admin, _ in ports:
                st, body = request(admin, "GET", "/cluster/members")
                if st == 200:
                    alive += sum(m["state"] == "alive" for m in json.loads(body)["members"]) == a.nodes
            if alive == a.nodes:
                break
            time.sleep(0.1)
        else:
            sys.exit("cluster did not form")
        up = json.dumps({"targets": [{"address": f"127.0.0.1:{backend.server_address[1]}"}]})
        st, body = request(ports[0][1], "PUT", "/config/upstreams/backend", up)
        assert st == 200, body
        while any(len(json.loads(request(p[1], "GET", "/config")[1])["upstreams"]) != 1
                  for p in ports):
            time.sleep(0.05)

        if a.bulk:
            bulk_load(a, ports)
            return
        took = []
        for i in range(a.puts):
            writer = ports[i % a.nodes][1]
            route = json.dumps({"match": {"path_prefix": f"/p{i}"}, "upstream": "backend"})
            t0 = time.monotonic()
            st, body = request(writer, "PUT", f"/config/routes/r{i}", route)
            assert st == 200, body
            pending = {p[0] for p in ports}
            while pending:
                for proxy in list(pending):
                    if request(proxy, "GET", f"/p{i}", token=False)[0] == 200:
                        pending.discard(proxy)
                if time.monotonic() - t0 > 30:
                    sys.exit(f"route r{i} not served everywhere after 30 s")
                if pending:
                    time.sleep(0.005)
            took.append((time.monotonic() - t0) * 1000)
        print(json.dumps({"nodes": a.nodes, "puts": a.puts,
                          "served_everywhere_ms_p50": round(percentile(took, 50), 1),
                          "served_everywhere_ms_p99": round(percentile(took, 99), 1),
                          "served_everywhere_ms_max": round(max(took), 1)}))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        backend.shutdown()
        if os.environ.get('BENCH_KEEP'): print('kept', tmp)
        else: shutil.rmtree(tmp, ignore_errors=True)


def bulk_load(a, ports):
    failures = []

    def client(c):
        admin = ports[c % len(ports)][1]
        conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=30)
        for i in range(c, a.bulk, a.clients):
            route = json.dumps({"match": {"path_prefix": f"/b{i}"}, "upstream": "backend",
                                "request_headers": {"add": {"x-gateway": "meridian"}}})
            for attempt in range(3):
                try:
                    conn.request("PUT", f"/config/routes/b{i}", route,
                                 {"Authorization": f"Bearer {TOKEN}"})
                    r = conn.getresponse()
                    r.read()
                    if r.status != 200:
                        failures.append((i, r.status))
                    break
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=30)
            else:
                failures.append((i, 0))
        conn.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    put_s = time.monotonic() - t0
    if failures:
        sys.exit(f"{len(failures)} PUTs failed, e.g. {failures[:5]}")
    t1 = time.monotonic()
    pending = {p[1] for p in ports}
    while pending and time.monotonic() - t1 < 120:
        for admin in list(pending):
            st, body = request(admin, "GET", "/config", timeout=30)
            if st == 200 and len(json.loads(body)["routes"]) == a.bulk:
                pending.discard(admin)
        if pending:
            time.sleep(0.05)
    if pending:
        sys.exit("not every node served every route 120 s after the last PUT")
    print(json.dumps({"nodes": a.nodes, "routes": a.bulk, "clients": a.clients,
                      "puts_s": round(put_s, 2), "puts_per_s": round(a.bulk / put_s),
                      "served_everywhere_after_last_put_s": round(time.monotonic() - t1, 2)}))


if __name__ == "__main__":
    main()
