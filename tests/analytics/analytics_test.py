#!/usr/bin/python3
"""Usage analytics and the busiest rate-limit keys, summed over a real three-node cluster.

Requests from two consumers (API keys) and anonymous clients go through all three nodes, on
routes of two API versions and one whose upstream fails. GET /analytics on any node answers the
cluster's totals per consumer, per key, per route and per version (requests, errors, bytes,
latency), equal to what was sent; they are still equal after every node restarts. The nodes have
different admin tokens: they ask each other with the peer tokens they publish. GET
/ratelimits/{route} lists the busiest keys of a header-keyed limit with cluster-wide counts and
refusals. Bad queries get 400; the peer endpoints refuse a client without a valid token.
usage: analytics_test.py MERIDIAN_BINARY
"""

import http.server
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
from harness import (check, finish, free_port, wait_http, write_keyring,  # noqa: E402
                     write_private)

REGIONS = ["eu-west", "us-east", "ap-south"]


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        status = 503 if "/fail" in self.path else 200
        body = b'{"ok":true}' if status == 200 else b'{"down":true}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def node_config(tmp, i, ports, upstream_port):
    me = ports[i]
    seeds = ", ".join(f"127.0.0.1:{p['gossip']}" for j, p in enumerate(ports) if j != i)
    return f"""node: {{id: n{i}, region: {REGIONS[i]}, data_dir: {tmp}/d{i}}}
listen: {{proxy: 127.0.0.1:{me['proxy']}, admin: 127.0.0.1:{me['admin']}}}
admin: {{token_file: {tmp}/admin{i}.token}}
cluster: {{bind: 127.0.0.1:{me['gossip']}, seeds: [{seeds}], keyring_file: {tmp}/cluster.keys}}
upstreams:
  - name: app
    targets: [127.0.0.1:{upstream_port}]
routes:
  - name: v1
    match: {{path_prefix: /v1}}
    upstream: app
    api_version: v1
    auth: {{methods: [api_key]}}
  - name: v2
    match: {{path_prefix: /v2}}
    upstream: app
    api_version: v2
    auth: {{methods: [api_key]}}
  - name: open
    match: {{path_prefix: /open}}
    upstream: app
  - name: fail
    match: {{path_prefix: /fail}}
    upstream: app
  - name: limited
    match: {{path_prefix: /limited}}
    upstream: app
    rate_limit: {{limit: 5, window: 1h, key: "header:x-user", scope: global}}
consumers:
  - id: acme
  - id: globex
"""


def token(tmp, i):
    with open(f"{tmp}/admin{i}.token") as f:
        return f.read().strip()


def admin(tmp, ports, i, method, path, body=None, bearer=None):
    req = urllib.request.Request(f"http://127.0.0.1:{ports[i]['admin']}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    req.add_header("Authorization", "Bearer " + (bearer if bearer is not None else token(tmp, i)))
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def proxy_get(ports, i, path, headers=None):
    req = urllib.request.Request(f"http://127.0.0.1:{ports[i]['proxy']}{path}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        e.read()
        return e.code


def totals(answer):
    """{key: (requests, errors, bytes)} summed over the points of each series."""
    out = {}
    for s in answer["series"]:
        r = sum(p["requests"] for p in s["points"])
        e = sum(p["errors"] for p in s["points"])
        b = sum(p["bytes"] for p in s["points"])
        out[s["key"]] = (r, e, b)
    return out


def wait_for(what, fn, timeout=30):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.2)
    check(False, f"{what} (timed out; last: {last})")
    return None


def main():
    binary = sys.argv[1]
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(3):  # a different admin token on every node
            write_private(f"{tmp}/admin{i}.token", f"node-{i}-admin-token-0123456789\n")
        write_keyring(binary, f"{tmp}/cluster.keys")
        ports = [{"proxy": free_port(), "admin": free_port(), "gossip": free_port()}
                 for _ in range(3)]
        for i in range(3):
            with open(f"{tmp}/n{i}.yaml", "w") as f:
                f.write(node_config(tmp, i, ports, upstream.server_address[1]))
        log = open(f"{tmp}/nodes.log", "a")
        procs = {}

        def start(i):
            procs[i] = subprocess.Popen([binary, "run", "--config", f"{tmp}/n{i}.yaml"],
                                        stdout=log, stderr=log)

        def stop_all():
            for p in procs.values():
                p.send_signal(signal.SIGTERM)
            for p in procs.values():
                p.wait(timeout=30)

        try:
            for i in range(3):
                start(i)
            for i in range(3):
                wait_http(f"http://127.0.0.1:{ports[i]['admin']}/health",
                          alive=lambda: all(p.poll() is None for p in procs.values()))
            wait_for("three members alive everywhere", lambda: all(
                admin(tmp, ports, i, "GET", "/cluster/health")[1]["members"]["alive"] == 3
                for i in range(3)))

            # API keys made on one node authenticate on every node.
            keys = {}
            for c in ("acme", "globex"):
                st, body = admin(tmp, ports, 0, "POST", f"/config/consumers/{c}/keys", {})
                check(st == 201, f"key for {c} issued ({st})")
                keys[c] = body
            probes = {"acme": 0, "globex": 0}

            def probe(c, i):
                probes[c] += 1
                return proxy_get(ports, i, "/v1/ping", {"X-API-Key": keys[c]["key"]}) == 200

            for c in ("acme", "globex"):
                wait_for(f"{c}'s key works on every node",
                         lambda: all(probe(c, i) for i in range(3)))
            # Those probes were requests too (the only ones so far): start counting from the
            # analytics once they hold every probe (a node drains its counts every second).
            base = {}

            def probes_counted():
                st, a = admin(tmp, ports, 0, "GET", "/analytics?by=consumer&since=2h")
                # A probe refused (the key not there yet) counts too, as consumer (none).
                return st == 200 and sum(v[0] for v in totals(a).values()) == sum(probes.values())

            wait_for(f"the analytics count the probes ({probes})", probes_counted)
            for dim in ("consumer", "key", "route", "version"):
                st, a = admin(tmp, ports, 0, "GET", f"/analytics?by={dim}&since=2h")
                check(st == 200, f"GET /analytics?by={dim} answers 200 ({st})")
                base[dim] = totals(a)

            plan = [  # (node, path, consumer or None, count)
                (0, "/v1/a", "acme", 7), (1, "/v1/b", "acme", 5), (2, "/v1/c", "acme", 3),
                (1, "/v2/a", "globex", 4), (2, "/v2/b", "globex", 2),
                (2, "/open/x", None, 5), (0, "/fail/x", None, 3),
            ]
            sent = {"consumer": {}, "key": {}, "route": {}, "version": {}}
            errors = {"route": {}}

            def add(dim, k, n):
                sent[dim][k] = sent[dim].get(k, 0) + n

            for node, path, consumer, n in plan:
                headers = {"X-API-Key": keys[consumer]["key"]} if consumer else {}
                for _ in range(n):
                    want = 503 if path.startswith("/fail") else 200
                    got = proxy_get(ports, node, path, headers)
                    if got != want:
                        check(False, f"{path} via n{node} answered {got}, expected {want}")
                route = path.split("/")[1]
                add("consumer", consumer or "(none)", n)
                add("key", keys[consumer]["key_id"] if consumer else "(none)", n)
                add("route", route, n)
                add("version", route if route in ("v1", "v2") else "(none)", n)
                if route == "fail":
                    errors["route"]["fail"] = n

            def delta(dim, answer):
                now = totals(answer)
                return {k: now.get(k, (0, 0, 0))[0] - base[dim].get(k, (0, 0, 0))[0]
                        for k in set(now) | set(base[dim])
                        if now.get(k, (0, 0, 0))[0] - base[dim].get(k, (0, 0, 0))[0]}

            last_seen = [None]

            def matches_everywhere(label):
                for i in range(3):
                    for dim in sent:
                        st, a = admin(tmp, ports, i, "GET", f"/analytics?by={dim}&since=2h")
                        if st != 200 or sorted(a["nodes"]["answered"]) != ["n0", "n1", "n2"]:
                            last_seen[0] = (label, i, dim, st, a.get("nodes"))
                            return False
                        if delta(dim, a) != sent[dim]:
                            last_seen[0] = (label, i, dim, delta(dim, a), sent[dim])
                            return False
                return True

            ok = wait_for("analytics totals on every node equal the requests sent",
                          lambda: matches_everywhere("first"))
            check(bool(ok), "per consumer, key, route and version, summed over three nodes")
            st, a = admin(tmp, ports, 1, "GET", "/analytics?by=route&since=2h")
            t = totals(a)
            check(t["fail"][1] == 3 and t["open"][1] == 0,
                  f"errors: the failing route's 3 answers of 503, none elsewhere ({t})")
            check(t["v1"][2] > 0, f"bytes counted ({t['v1']})")
            p = [pt for s in a["series"] if s["key"] == "v1" for pt in s["points"]]
            check(all(pt["p99_ms"] >= pt["p50_ms"] > 0 for pt in p),
                  f"latency percentiles per point ({p})")
            check(sum(pt["requests"] for pt in a["total"]) == sum(v[0] for v in t.values()),
                  "total: the sum of every series")
            check(a["step_ms"] == 60000, "the last hours come per minute")
            st, h = admin(tmp, ports, 2, "GET", "/analytics?by=consumer&since=3d")
            check(st == 200 and h["step_ms"] == 3600000, "older ranges come per hour")
            check(delta("consumer", h) == sent["consumer"],
                  f"the hour points hold the same totals ({delta('consumer', h)})")
            st, dd = admin(tmp, ports, 0, "GET", "/analytics?by=route&since=30d")
            check(st == 200 and dd["step_ms"] == 86400000, "a month comes per day")
            check(delta("route", dd) == {k: v for k, v in sent["route"].items()},
                  f"the day points hold the same totals ({delta('route', dd)})")

            # Bad queries.
            for q, what in [("by=bogus", "an unknown dimension"), ("", "no dimension"),
                            ("by=route&since=yesterday", "an unreadable time"),
                            ("by=route&step=5m", "an unknown step"),
                            ("by=route&since=100&until=50", "until before since"),
                            ("by=route&limit=0", "limit 0")]:
                st, body = admin(tmp, ports, 0, "GET", "/analytics?" + q)
                check(st == 400 and body.get("error") == "bad_request", f"{what}: 400 ({st})")
            st, _ = admin(tmp, ports, 0, "GET", "/peer/analytics?by=route", bearer="wrong-token")
            check(st == 401, f"the peer endpoint refuses a wrong token ({st})")
            st, _ = admin(tmp, ports, 0, "GET", "/analytics?by=route", bearer=token(tmp, 1))
            check(st == 401, f"another node's admin token opens nothing here ({st})")
            st, a = admin(tmp, ports, 0, "GET", "/analytics?by=route&since=2h&limit=2")
            check(st == 200 and len(a["series"]) == 2 and a["truncated"] >= 2,
                  f"limit keeps the busiest series ({len(a['series'])}, {a.get('truncated')})")

            # The busiest keys of a header-keyed limit, across nodes.
            # A cold key's first requests on a node may be refused before the node hears from
            # the others (its lease is a share of the limit): expect what the answers said.
            users = [(0, "alice", 8), (1, "bob", 3), (2, "carol", 1), (1, "alice", 1)]
            admitted, refused = {}, {}
            for node, user, n in users:
                for _ in range(n):
                    st = proxy_get(ports, node, "/limited", {"X-User": user})
                    d = admitted if st == 200 else refused
                    d[user] = d.get(user, 0) + 1
                    check(st in (200, 429), f"/limited answers 200 or 429 ({st})")
            check(refused.get("alice", 0) >= 4, f"alice is refused beyond the limit ({refused})")
            n_limited = sum(n for _, _, n in users)
            for dim, k in (("consumer", "(none)"), ("key", "(none)"), ("route", "limited"),
                           ("version", "(none)")):
                add(dim, k, n_limited)

            def top_ok():
                st, r = admin(tmp, ports, 2, "GET", "/ratelimits/limited")
                if st != 200:
                    return None
                rows = {t["key"]: t for t in r["top"]}
                counts = [t["count"] for t in r["top"]]
                good = all(rows.get(u, {}).get("count") == admitted.get(u, 0) and
                           rows.get(u, {}).get("rejected") == refused.get(u, 0)
                           for u in ("alice", "bob", "carol")) and counts == sorted(counts)[::-1]
                return r if good else None

            r = wait_for("GET /ratelimits/limited lists alice, bob, carol with their counts "
                         f"({admitted}) and refusals ({refused})", top_ok)
            if r:
                check(r["limit"] == 5 and r["window_ms"] == 3600000, "with the limit and window")
                check(r["top"][0]["key"] == "alice" and "n0" in r["top"][0]["by_node"],
                      f"the busiest first, its count per node ({r['top'][0]})")
            st, r = admin(tmp, ports, 0, "GET", "/ratelimits/limited?top=1")
            check(st == 200 and len(r["top"]) == 1, "top=1")
            # bob's requests went through n1: n0 reads them from the replicated counters, once
            # gossip brought them (n2 answered above; n0 may be a round behind).
            last_key_view = [None]

            def bob_counted():
                st, r = admin(tmp, ports, 0, "GET", "/ratelimits/limited?key=bob")
                last_key_view[0] = (st, r)
                return st == 200 and r["count"] == admitted.get("bob", 0)

            check(wait_for("n0 counts bob", bob_counted),
                  f"the per-key form still answers ({last_key_view[0]})")
            st, _ = admin(tmp, ports, 0, "GET", "/ratelimits/limited?top=0")
            check(st == 400, "top=0 is refused")

            # Every node restarts: the totals are still there.
            stop_all()
            for i in range(3):
                start(i)
            for i in range(3):
                wait_http(f"http://127.0.0.1:{ports[i]['admin']}/health",
                          alive=lambda: all(p.poll() is None for p in procs.values()))
            ok = wait_for("the same totals after every node restarted",
                          lambda: matches_everywhere("restart"), timeout=60)
            check(bool(ok), f"analytics survive a restart of the whole cluster ({last_seen[0]})")
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
                    p.wait()
            log.close()
            if os.environ.get("KEEP_LOGS"):
                print(open(f"{tmp}/nodes.log").read()[-5000:])
    upstream.shutdown()
    finish()


if __name__ == "__main__":
    main()
