#!/usr/bin/env python3
"""How well global rate limits hold on real processes with 50 ms between regions (issue 18).

    chaos/accuracy.py [--measure cold|steady|all] [--runs 20] [--windows 20]
                      [--binary build/bin/meridian] [--out build/accuracy]

Uses the chaos suite's topology (network namespaces, userspace delay between regions: 50 ms one
way between every pair, 2 ms jitter) and node configs (chaos/harness/cluster.py):

  cold    3 regions, one node each. `runs` bursts per mode on a key nobody has seen: 600
          requests over 4 s split 60/30/10 across the nodes (a client per node, in
          its namespace, 32 keep-alive connections, open loop: requests leave at their times
          whatever the answers take), limit 200 per 10 s (routes burst-eventual and
          burst-strict), each burst inside one window. Bound: eventual within +-3 % of the limit in every run; strict never
          over it.
  steady  3 regions, two nodes each. Steady load at 3x the limit (500 per 5 s) on /limited
          (eventual) and /strict for `windows` whole windows, split evenly over the six nodes.
          Bound: eventual per-window error p99 within 2 %; strict never over the limit.

Needs root. Prints each measurement and a summary line per bound; exits 0 when all hold.
"""
import argparse
import http.client
import os
import shutil
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import cluster as cl  # noqa: E402
from harness import netns  # noqa: E402

REGIONS = ["eu-west", "us-east", "ap-south"]
ONE_WAY_MS = 50
JITTER_MS = 2
FAILED = []


def log(text):
    print(text, flush=True)


def bound(ok, what):
    log(("PASS " if ok else "FAIL ") + what)
    if not ok:
        FAILED.append(what)


def burst_client(port, path, key, n, seconds, start_at, connections=32):
    """Runs in a node's namespace: n requests to path from Unix time start_at, evenly spaced over
    `seconds` whatever the answers take (open loop: `connections` keep-alive connections, each
    sending its share at the scheduled times; threads started here share the namespace).
    Returns (admitted, latencies in s)."""
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    start = time.monotonic()
    admitted, lat, lock = [0], [], threading.Lock()

    def worker(first):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for k in range(first, n, connections):
            wait = start + seconds * (k + 0.5) / n - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            sent = time.monotonic()
            try:
                conn.request("GET", path, headers={"x-key": key})
                r = conn.getresponse()
                r.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                continue
            with lock:
                lat.append(time.monotonic() - sent)
                admitted[0] += r.status == 200
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(min(connections, n))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return admitted[0], lat


def start_cluster(topo, binary, workdir):
    topo.create()
    c = cl.Cluster(topo, binary, workdir)
    c.start_upstreams()
    for n in c.nodes:
        n.start()
    took = c.wait_converged(60)
    if took is None:
        raise RuntimeError("the cluster did not form within 60 s")
    log(f"cluster of {len(c.nodes)} formed in {took:.1f} s")
    time.sleep(2)  # past the strict limits' first hand-over
    return c


def measure_cold(binary, out, runs):
    delays = {(a, b): ONE_WAY_MS for i, a in enumerate(REGIONS) for b in REGIONS[i + 1:]}
    topo = netns.Topology(f"mc{os.getpid()}", REGIONS, 1, delays, JITTER_MS)
    c = None
    try:
        c = start_cluster(topo, binary, os.path.join(out, "cold"))
        shares = (0.6, 0.3, 0.1)
        window_s = cl.BURST_WINDOW_MS / 1000
        for mode, path in (("eventual", "/burst/e"), ("strict", "/burst/s")):
            totals, lat = [], []
            for run in range(runs):
                now = time.time()
                start_at = (now // window_s + 1) * window_s + 0.1
                key = f"cold-{os.getpid()}-{mode}-{run}"
                results = [None] * 3

                def client(i):
                    n = round(600 * shares[i])
                    results[i] = c.nodes[i].host.thread.call(burst_client, cl.PROXY_PORT, path, key,
                                                             n, 4.0, start_at)

                threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                total = sum(r[0] for r in results)
                totals.append(total)
                for r in results:
                    lat.extend(r[1])
                log(f"cold {mode} run {run + 1:2d}: admitted {total} (limit {cl.BURST_LIMIT}, "
                    f"{100.0 * (total - cl.BURST_LIMIT) / cl.BURST_LIMIT:+.1f} %), by node "
                    f"{[r[0] for r in results]}")
            errors = [100.0 * (t - cl.BURST_LIMIT) / cl.BURST_LIMIT for t in totals]
            lat.sort()
            p = lambda q: 1000 * lat[min(len(lat) - 1, int(q * len(lat)))]
            log(f"cold {mode}: admitted min {min(totals)} median {statistics.median(totals)} max "
                f"{max(totals)} (error {min(errors):+.1f} % .. {max(errors):+.1f} %); latency "
                f"p50 {p(0.5):.1f} ms p99 {p(0.99):.1f} ms over {len(lat)} requests")
            if mode == "eventual":
                bound(all(abs(e) <= 3.0 for e in errors),
                      f"cold bursts, eventual, 50 ms between regions: every run within +-3 % "
                      f"({min(errors):+.1f} % .. {max(errors):+.1f} %, {runs} runs)")
            else:
                bound(max(totals) <= cl.BURST_LIMIT,
                      f"cold bursts, strict, 50 ms between regions: never over the limit "
                      f"(max {max(totals)} of {cl.BURST_LIMIT}, {runs} runs)")
    finally:
        if c:
            c.stop_all()
        topo.destroy()


def measure_steady(binary, out, windows):
    delays = {(a, b): ONE_WAY_MS for i, a in enumerate(REGIONS) for b in REGIONS[i + 1:]}
    topo = netns.Topology(f"mc{os.getpid()}", REGIONS, 2, delays, JITTER_MS)
    c = None
    try:
        c = start_cluster(topo, binary, os.path.join(out, "steady"))
        per_node = 3 * cl.LIMIT / (cl.WINDOW_MS / 1000) / len(c.nodes)  # 3x the limit in all
        c.start_load([f"/limited={per_node:g}:2", f"/strict={per_node:g}:16"])
        started = time.time()
        time.sleep((windows + 2) * cl.WINDOW_MS / 1000 + 0.5)
        c.stop_load()
        ended = time.time()
        per_window = {"/limited": {}, "/strict": {}}
        for rows in c.read_load().values():
            for path, counts in per_window.items():
                for w, n in cl.decided_windows(rows, path).items():
                    counts[w] = counts.get(w, 0) + n
        whole = lambda w: w / 1000 >= started + 1 and (w + cl.WINDOW_MS) / 1000 <= ended - 0.5
        eventual = sorted(v for w, v in per_window["/limited"].items() if whole(w))
        strict = sorted(v for w, v in per_window["/strict"].items() if whole(w))
        errors = sorted(abs(100.0 * (v - cl.LIMIT) / cl.LIMIT) for v in eventual)
        p99 = errors[min(len(errors) - 1, int(0.99 * len(errors)))] if errors else float("inf")
        log(f"steady eventual: {len(eventual)} windows, admitted {eventual}")
        log(f"steady strict: {len(strict)} windows, admitted {strict}")
        bound(len(eventual) >= windows and p99 <= 2.0,
              f"steady 3x load, eventual, 6 nodes in 3 regions 50 ms apart: per-window error p99 "
              f"{p99:.1f} % over {len(eventual)} windows (bound 2 %)")
        bound(bool(strict) and max(strict) <= cl.LIMIT,
              f"steady 3x load, strict: never over the limit (max {max(strict) if strict else 0}"
              f" of {cl.LIMIT}, {len(strict)} windows)")
    finally:
        if c:
            c.stop_all()
        topo.destroy()


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--measure", choices=["cold", "steady", "all"], default="all")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--windows", type=int, default=20)
    ap.add_argument("--binary", default=os.path.join(root, "build", "bin", "meridian"))
    ap.add_argument("--out", default=os.path.join(root, "build", "accuracy"))
    a = ap.parse_args()
    if os.geteuid() != 0:
        log("accuracy: needs root (network namespaces)")
        return 77
    netns.cleanup_stale(log)
    shutil.rmtree(a.out, ignore_errors=True)
    os.makedirs(a.out, exist_ok=True)
    binary = os.path.abspath(a.binary)
    if a.measure in ("cold", "all"):
        measure_cold(binary, a.out, a.runs)
    if a.measure in ("steady", "all"):
        measure_steady(binary, a.out, a.windows)
    log(f"accuracy: {len(FAILED)} bound(s) failed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
