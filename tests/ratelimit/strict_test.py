#!/usr/bin/python3
"""Strict rate limits (mode: strict) on a real three-node cluster: never one admission over.

1. Exact under concurrency: three clients, one per node, send at once for the same key; the
   cluster admits exactly the limit, every answer carries RateLimit-* lines, refusals
   Retry-After.
2. The owner dies mid-window: a key owned by another node is half used through a node that
   asks; its owner is killed (SIGKILL); clients keep asking through the survivors. While nobody
   owns the key the limit's on_partition (fail_closed) refuses; once the survivors have a new
   owner it goes on from the dead owner's count: over the window exactly the limit is
   admitted, never more.
3. The owner comes back (restart) while the others stand still (SIGSTOP): it cannot join, and
   it remembers the members it counted, so it decides nothing alone (fail_closed refuses). Then
   it joins and takes its keys over again without admitting more.
4. Two members die for good: the survivor is no majority and refuses until an operator forgets
   them (DELETE /cluster/members/{id}); then it decides alone.
Windows are 1 h (aligned to Unix hours); a phase that straddles an hour is run again. The asks
wait up to 5 s (strict_timeout), so a loaded machine (sanitizers, ctest -j) slows the test down
but does not turn an answer into a timeout, which would be refused and change the counts.
usage: strict_test.py MERIDIAN_BINARY
"""

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import http.client
import http.server
import json
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
from harness import check, finish, free_port, write_keyring, write_private  # noqa: E402

TOKEN = "strict-test-token-0123456789abcdef"
REGIONS = ["eu-west", "us-east", "ap-south"]
LIMIT = 60


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16  # one write per response (no Nagle delay against the proxy's ACKs)

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def node_config(tmp, i, ports, upstream_port):
    me = ports[i]
    seeds = ", ".join(f"127.0.0.1:{p['gossip']}" for j, p in enumerate(ports) if j != i)
    return f"""node: {{id: n{i}, region: {REGIONS[i]}, data_dir: {tmp}/d{i}}}
listen: {{proxy: 127.0.0.1:{me['proxy']}, admin: 127.0.0.1:{me['admin']}}}
admin: {{token_file: {tmp}/admin.token}}
log: {{level: warn}}
cluster: {{bind: 127.0.0.1:{me['gossip']}, seeds: [{seeds}], keyring_file: {tmp}/cluster.keys}}
upstreams:
  - name: app
    targets: [127.0.0.1:{upstream_port}]
routes:
  - name: strict
    match: {{path_prefix: /strict}}
    upstream: app
    rate_limit: {{limit: {LIMIT}, window: 1h, key: "header:x-user", scope: global, mode: strict,
                 on_partition: fail_closed, algorithm: fixed_window, strict_timeout: 5s}}
"""


class Cluster:
    def __init__(self, binary, tmp, upstream_port):
        self.binary, self.tmp = binary, tmp
        self.ports = [{"proxy": free_port(), "admin": free_port(), "gossip": free_port()}
                      for _ in range(3)]
        write_private(f"{tmp}/admin.token", TOKEN + "\n")
        write_keyring(binary, f"{tmp}/cluster.keys")
        for i in range(3):
            with open(f"{tmp}/n{i}.yaml", "w") as f:
                f.write(node_config(tmp, i, self.ports, upstream_port))
        self.procs = [None] * 3

    def start(self, i):
        self.procs[i] = subprocess.Popen([self.binary, "run", "--config", f"{self.tmp}/n{i}.yaml"],
                                         stderr=open(f"{self.tmp}/n{i}.log", "a"))

    def admin(self, i, path):
        req = urllib.request.Request(f"http://127.0.0.1:{self.ports[i]['admin']}{path}",
                                     headers={"Authorization": "Bearer " + TOKEN})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def alive_seen(self, i):
        status, body = self.admin(i, "/cluster/members")
        if status != 200:
            return -1
        return sum(1 for m in json.loads(body).get("members", []) if m.get("state") == "alive")

    def wait_alive(self, nodes, count, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.alive_seen(i) == count for i in nodes):
                return True
            time.sleep(0.1)
        return False

    def stop(self):
        for p in self.procs:
            if p and p.poll() is None:
                p.terminate()
        for p in self.procs:
            if p:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()


def ask(conn, user):
    """One request through a keep-alive connection: (status, headers)."""
    conn.request("GET", "/strict/x", headers={"x-user": user})
    r = conn.getresponse()
    r.read()
    return r.status, {k.lower(): v for k, v in r.getheaders()}


def hour():
    return int(time.time()) // 3600


def owner_of(c, user):
    """The node whose replicated slot holds the key's admissions (the owner counts them)."""
    status, body = c.admin(0, f"/ratelimits/strict?key={user}")
    if status != 200:
        return None
    by_node = json.loads(body).get("by_node", {})
    return max(by_node, key=by_node.get) if by_node else None


def exact_under_concurrency(c):
    for attempt in range(2):
        user, start_hour = f"alice-{os.getpid()}-{attempt}", hour()
        results = [[] for _ in range(3)]

        def client(i):
            conn = http.client.HTTPConnection("127.0.0.1", c.ports[i]["proxy"], timeout=10)
            for _ in range(LIMIT):
                results[i].append(ask(conn, user))
            conn.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if hour() != start_hour:
            continue
        answers = [a for part in results for a in part]
        admitted = sum(1 for s, _ in answers if s == 200)
        check(admitted == LIMIT,
              f"three nodes at once admit exactly the limit: {admitted} of {len(answers)} "
              f"(limit {LIMIT}; by node {[sum(1 for s, _ in p if s == 200) for p in results]})")
        check(all("ratelimit-limit" in h and "ratelimit-remaining" in h for _, h in answers),
              "every answer carries RateLimit-Limit and RateLimit-Remaining")
        refused = [h for s, h in answers if s == 429]
        check(refused and all(int(h.get("retry-after", "0")) >= 1 for h in refused),
              "every refusal carries Retry-After")
        return
    check(False, "two attempts straddled an hour")


def owner_dies_mid_window(c):
    for attempt in range(2):
        start_hour = hour()
        conn0 = http.client.HTTPConnection("127.0.0.1", c.ports[0]["proxy"], timeout=10)
        # A key that another node owns: n0 asks for it.
        user = owner = None
        for k in range(50):
            candidate = f"bob-{os.getpid()}-{attempt}-{k}"
            ask(conn0, candidate)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and owner_of(c, candidate) is None:
                time.sleep(0.05)
            o = owner_of(c, candidate)
            if o and o != "n0":
                user, owner = candidate, o
                break
        if not check(user is not None, f"found a key owned by another node ({owner})"):
            return
        victim = int(owner[1:])
        survivor = next(i for i in (1, 2) if i != victim)
        admitted = 1  # the probe above
        for _ in range(LIMIT // 2 - 1):
            admitted += ask(conn0, user)[0] == 200
        check(admitted == LIMIT // 2, f"half the limit admitted through n0 asking {owner}: "
                                      f"{admitted}")
        c.procs[victim].kill()
        c.procs[victim].wait()
        killed_at = time.monotonic()
        # Keep asking through both survivors until the window's quota is spent and refusals
        # are the only answer for a while.
        conn_s = http.client.HTTPConnection("127.0.0.1", c.ports[survivor]["proxy"], timeout=10)
        statuses = []
        first_after = None
        deadline = time.monotonic() + 25
        refusals_in_a_row = 0
        while time.monotonic() < deadline and refusals_in_a_row < 40:
            for conn in (conn0, conn_s):
                s, _ = ask(conn, user)
                statuses.append(s)
                if s == 200:
                    admitted += 1
                    refusals_in_a_row = 0
                    if first_after is None:
                        first_after = time.monotonic() - killed_at
                else:
                    refusals_in_a_row += admitted >= LIMIT
            time.sleep(0.02)
        conn0.close()
        conn_s.close()
        if hour() != start_hour:
            c.start(victim)
            c.wait_alive([0, 1, 2], 3)
            continue
        if admitted != LIMIT:
            for i in (0, survivor):
                print(f"n{i}:", c.admin(i, f"/ratelimits/strict?key={user}")[1])
                print("\n".join(l for l in c.admin(i, "/metrics")[1].splitlines()
                                if "strict_total" in l and not l.startswith("#")))
        check(admitted == LIMIT,
              f"with the owner killed mid-window the survivors admit exactly the rest: "
              f"{admitted} of limit {LIMIT} (first admission {first_after and round(first_after, 1)} s "
              f"after the kill; {statuses.count(429)} refused)")
        check(set(statuses) <= {200, 429}, f"answers are 200 or 429 only: {sorted(set(statuses))}")
        # The owner comes back while the others stand still (SIGSTOP), so it cannot join: it
        # remembers them and so is no majority alone — before it counted only itself and could
        # take its keys over from its own store alone, admitting what the survivors admitted since.
        others = [0, survivor]
        for i in others:
            c.procs[i].send_signal(signal.SIGSTOP)
        alone = []
        try:
            c.start(victim)
            # The admin API answers once the node serves (the proxy listens before it).
            metrics = ""
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and "strict_members" not in metrics:
                status, metrics = c.admin(victim, "/metrics")
                if status != 200:
                    time.sleep(0.05)
            counted = [l for l in metrics.splitlines()
                       if l.startswith('meridian_ratelimit_strict_members{scope="global"')]
            check(sorted(counted) == ['meridian_ratelimit_strict_members{scope="global",'
                                      'state="alive"} 1',
                                      'meridian_ratelimit_strict_members{scope="global",'
                                      'state="counted"} 3'],
                  f"the restarted node counts the three members it kept in its store, one "
                  f"alive: {counted}")
            conn_v = http.client.HTTPConnection("127.0.0.1", c.ports[victim]["proxy"], timeout=10)
            alone = [ask(conn_v, user)[0] for _ in range(20)]
            conn_v.close()
        finally:
            for i in others:
                c.procs[i].send_signal(signal.SIGCONT)
        check(set(alone) == {429},
              f"the restarted owner, unable to join, admits nothing (fail_closed): "
              f"{[alone.count(s) for s in (200, 429)]} of {len(alone)} admitted/refused")
        # It joins and takes its keys over again: still nothing over the limit.
        check(c.wait_alive([0, 1, 2], 3), "the killed node rejoins")
        time.sleep(1.5)  # past the hand-over
        extra = 0
        conn_v = http.client.HTTPConnection("127.0.0.1", c.ports[victim]["proxy"], timeout=10)
        for _ in range(20):
            extra += ask(conn_v, user)[0] == 200
        conn_v.close()
        if hour() == start_hour:
            check(extra == 0, f"the restarted owner admits nothing more in the window: {extra}")
        return
    check(False, "two attempts straddled an hour")


def forgetting_members(c):
    """Two of three members gone for good: the survivor is no majority (and refuses, fail_closed)
    until an operator forgets them with DELETE /cluster/members/{id}."""
    def forget(member):
        req = urllib.request.Request(
            f"http://127.0.0.1:{c.ports[0]['admin']}/cluster/members/{member}", method="DELETE",
            headers={"Authorization": "Bearer " + TOKEN})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def counted():
        _, metrics = c.admin(0, "/metrics")
        for l in metrics.splitlines():
            if l.startswith('meridian_ratelimit_strict_members{scope="global",state="counted"}'):
                return int(l.split()[-1])
        return None

    check(forget("n1") == 409, "an alive member is not forgotten (409)")
    check(forget("n0") == 409, "a node does not forget itself (409)")
    check(forget("nobody") == 404, "an unknown member: 404")
    for i in (1, 2):
        c.procs[i].kill()
        c.procs[i].wait()
    deadline = time.monotonic() + 30
    dead = set()
    while time.monotonic() < deadline and dead != {"n1", "n2"}:
        status, body = c.admin(0, "/cluster/members")
        if status == 200:
            dead = {m["id"] for m in json.loads(body)["members"] if m.get("state") == "dead"}
        time.sleep(0.1)
    if not check(dead == {"n1", "n2"}, f"n0 sees n1 and n2 dead: {dead}"):
        return
    user = f"carol-{os.getpid()}"
    conn = http.client.HTTPConnection("127.0.0.1", c.ports[0]["proxy"], timeout=10)
    before = [ask(conn, user)[0] for _ in range(5)]
    check(set(before) == {429}, f"one of three alive is no majority: refused ({before})")
    check(forget("n1") == 200, "a dead member is forgotten (200)")
    cli = subprocess.run([c.binary, "members", "forget", "n2", "--admin",
                          f"http://127.0.0.1:{c.ports[0]['admin']}", "--token-file",
                          f"{c.tmp}/admin.token"], capture_output=True, text=True, timeout=30)
    check(cli.returncode == 0 and "forgot n2" in cli.stdout,
          f"`meridian members forget n2` forgets the other: {cli.returncode} {cli.stdout!r} "
          f"{cli.stderr!r}")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and counted() != 1:
        time.sleep(0.05)
    check(counted() == 1, f"n0 counts itself alone once they are forgotten: {counted()}")
    after = [ask(conn, user)[0] for _ in range(5)]
    conn.close()
    check(after == [200] * 5, f"a majority of one decides again: {after}")


def main():
    binary = os.path.abspath(sys.argv[1])
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory(prefix="meridian-strict-") as tmp:
        c = Cluster(binary, tmp, upstream.server_address[1])
        try:
            for i in range(3):
                c.start(i)
            if check(c.wait_alive([0, 1, 2], 3), "three nodes see each other alive"):
                time.sleep(1.2)  # past the first view's hand-over
                exact_under_concurrency(c)
                owner_dies_mid_window(c)
                forgetting_members(c)
        finally:
            c.stop()
            for i in range(3):
                if os.path.exists(f"{tmp}/n{i}.log"):
                    with open(f"{tmp}/n{i}.log") as f:
                        tail = f.read()[-2000:]
                    if "error" in tail.lower() or "fatal" in tail.lower():
                        print(f"--- n{i}.log ---\n{tail}")
    finish()


if __name__ == "__main__":
    main()
