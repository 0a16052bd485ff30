#!/usr/bin/python3
"""The admin API's command line against a real two-node cluster.

`meridian members`, `health`, `config get`, `config apply FILE` (the diff, then the changes, a
second apply finding nothing to do, --dry-run, --no-delete, deletions, a bad file refused with its
line) and `keys create|list|revoke`, as tables and as --json, with the token from --token-file,
MERIDIAN_TOKEN or MERIDIAN_TOKEN_FILE. A change applied through one node shows on the other.
usage: cli_test.py MERIDIAN_BINARY
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
from harness import (FAILURES, check, finish, free_port, wait_http,  # noqa: E402
                     write_keyring, write_private)

TOKEN = "test-token-0123456789abcdef"


def node_config(tmp, i, ports):
    me = ports[i]
    other = ports[1 - i]
    return f"""node: {{id: n{i}, region: {'eu-west' if i == 0 else 'us-east'}, data_dir: {tmp}/d{i}}}
listen: {{proxy: 127.0.0.1:{me['proxy']}, admin: 127.0.0.1:{me['admin']}}}
admin: {{token_file: {tmp}/admin.token}}
cluster: {{bind: 127.0.0.1:{me['gossip']}, seeds: [127.0.0.1:{other['gossip']}],
          keyring_file: {tmp}/cluster.keys}}
upstreams:
  - name: seed
    targets: [127.0.0.1:1]
routes:
  - name: seed
    match: {{path_prefix: /seed}}
    upstream: seed
"""


APPLY = """upstreams:
  - name: seed
    targets: [127.0.0.1:1]
  - name: users
    targets: [{address: 127.0.0.1:9001}, {address: 127.0.0.1:9002}]
    retries: {attempts: 2}
routes:
  - name: seed
    match: {path_prefix: /seed}
    upstream: seed
  - name: users
    match: {path_prefix: /api/users, methods: [GET, POST]}
    upstream: users
    strip_prefix: /api
consumers:
  - id: acme
    groups: [partners]
"""


def main():
    binary = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        write_private(f"{tmp}/admin.token", TOKEN + "\n")
        write_keyring(binary, f"{tmp}/cluster.keys")
        ports = [{"proxy": free_port(), "admin": free_port(), "gossip": free_port()}
                 for _ in range(2)]
        for i in range(2):
            with open(f"{tmp}/n{i}.yaml", "w") as f:
                f.write(node_config(tmp, i, ports))
        log = open(f"{tmp}/nodes.log", "w")
        nodes = [subprocess.Popen([binary, "run", "--config", f"{tmp}/n{i}.yaml"], stderr=log)
                 for i in range(2)]
        try:
            for p in ports:
                wait_http(f"http://127.0.0.1:{p['admin']}/health", 30)
            tests(binary, tmp, ports)
        except Exception as e:
            check(False, f"the story runs to its end: {e!r}")
        finally:
            for n in nodes:
                n.send_signal(signal.SIGTERM)
            for n in nodes:
                try:
                    n.wait(30)
                except subprocess.TimeoutExpired:
                    n.kill()
            log.close()
            if FAILURES:
                print(open(f"{tmp}/nodes.log").read()[-5000:])
    finish()


def tests(binary, tmp, ports):
    a = f"http://127.0.0.1:{ports[0]['admin']}"
    b = f"http://127.0.0.1:{ports[1]['admin']}"
    token_file = f"{tmp}/admin.token"

    def cli(*args, admin=a, env=None, token=True):
        full = [binary, *args, "--admin", admin]
        if token and env is None:
            full += ["--token-file", token_file]
        e = dict(os.environ)
        e.pop("MERIDIAN_TOKEN", None)
        e.pop("MERIDIAN_TOKEN_FILE", None)
        e.update(env or {})
        r = subprocess.run(full, capture_output=True, text=True, env=e, timeout=30)
        return r.returncode, r.stdout, r.stderr

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rc, out, err = cli("members", "--json")
        members = json.loads(out)["members"] if rc == 0 else []
        if sum(m["state"] == "alive" for m in members) == 2:
            break
        time.sleep(0.2)
    check(sorted(m["id"] for m in members) == ["n0", "n1"], f"members --json lists both ({out})")
    rc, out, err = cli("members")
    lines = out.splitlines()
    check(rc == 0 and lines[0].split() == ["ID", "REGION", "ZONE", "ADDRESS", "STATE", "INCARNATION"]
          and any(l.split()[:2] == ["n0", "eu-west"] and "alive" in l for l in lines[1:]) and
          any(l.split()[:2] == ["n1", "us-east"] and "alive" in l for l in lines[1:]),
          f"members as a table ({out!r})")
    rc, out, err = cli("health", env={"MERIDIAN_TOKEN": TOKEN})
    check(rc == 0 and "status:          healthy" in out and "2 alive" in out and
          "us-east" in out, f"health with MERIDIAN_TOKEN ({rc} {out!r} {err!r})")
    rc, out, err = cli("health", "--json", env={"MERIDIAN_TOKEN_FILE": token_file})
    check(rc == 0 and json.loads(out)["status"] == "healthy", "health --json with MERIDIAN_TOKEN_FILE")
    rc, out, err = cli("members", token=False)
    check(rc == 1 and "401" in err and "token" in err, f"no token: exit 1 and why ({err!r})")
    rc, out, err = cli("members", admin="http://127.0.0.1:1")
    check(rc == 1 and "cannot reach" in err, f"no node there: exit 1 and why ({err!r})")

    with open(f"{tmp}/apply.yaml", "w") as f:
        f.write(APPLY)
    rc, out, err = cli("config", "apply", f"{tmp}/apply.yaml", "--dry-run")
    check(rc == 0 and "+ upstream users" in out and "+ route users" in out and
          "+ consumer acme" in out and "dry run" in out, f"apply --dry-run shows the plan ({out!r})")
    rc, out, _ = cli("config", "get", "--json")
    check(all(r["name"] != "users" for r in json.loads(out)["routes"]), "... and applies nothing")
    rc, out, err = cli("config", "apply", f"{tmp}/apply.yaml")
    check(rc == 0 and "applied: 3 created, 0 updated, 0 deleted" in out,
          f"apply creates the three objects ({out!r} {err!r})")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        rc, out, _ = cli("config", "get", "--json", admin=b)
        if any(r["name"] == "users" for r in json.loads(out or "{}").get("routes", [])):
            break
        time.sleep(0.2)
    check(any(r["name"] == "users" for r in json.loads(out)["routes"]),
          "the other node has the applied route")
    rc, out, err = cli("config", "apply", f"{tmp}/apply.yaml", admin=b)
    check(rc == 0 and out.startswith("no changes"), f"a second apply (other node) has nothing to do ({out!r})")
    rc, out, err = cli("config", "get", admin=b)
    check(rc == 0 and "ROUTE" in out and any(l.split()[:1] == ["users"] and "users" in l.split()[1:]
                                               for l in out.splitlines()),
          f"config get as tables ({out!r})")

    changed = APPLY.replace("strip_prefix: /api", "strip_prefix: /api/users").replace(
        "  - id: acme\n    groups: [partners]\n", "")
    with open(f"{tmp}/apply.yaml", "w") as f:
        f.write(changed)
    rc, out, err = cli("config", "apply", f"{tmp}/apply.yaml", "--no-delete")
    check(rc == 0 and "~ route users: strip_prefix" in out and "consumer" not in out.split("applied")[0],
          f"--no-delete updates and keeps what the file leaves out ({out!r})")
    rc, out, err = cli("config", "apply", f"{tmp}/apply.yaml")
    check(rc == 0 and "- consumer acme" in out and "0 created, 0 updated, 1 deleted" in out,
          f"without it the extra object is deleted ({out!r})")

    with open(f"{tmp}/bad.yaml", "w") as f:
        f.write("routes:\n  - name: x\n    upstream: nowhere\n")
    rc, out, err = cli("config", "apply", f"{tmp}/bad.yaml")
    check(rc == 1 and "bad.yaml:3:" in err and "nowhere" in err,
          f"a bad file is refused with its line, nothing applied ({err!r})")

    with open(f"{tmp}/apply.yaml", "w") as f:
        f.write(APPLY)
    cli("config", "apply", f"{tmp}/apply.yaml")
    rc, out, err = cli("keys", "create", "acme", "--expires-in", "30d", "--json")
    created = json.loads(out) if rc == 0 else {}
    check(rc == 0 and created.get("key") and created.get("key_id"), f"keys create ({out!r} {err!r})")
    rc, out, err = cli("keys", "list", "acme")
    check(rc == 0 and created.get("key_id", "?") in out and "KEY_ID" in out, f"keys list ({out!r})")
    rc, out, err = cli("keys", "revoke", "acme", created.get("key_id", "x"))
    check(rc == 0 and "revoked" in out, f"keys revoke ({out!r} {err!r})")
    rc, out, err = cli("keys", "list", "acme", "--json")
    check(rc == 0 and all(k["key_id"] != created.get("key_id") for k in json.loads(out)["keys"]),
          "the revoked key is gone")
    rc, out, err = cli("nonsense")
    check(rc == 2, "an unknown command is a usage error")

    # GET /consumers/{id}/usage: the consumer's count in each consumer-keyed quota, from the
    # counters every node shares.
    metered = APPLY.replace("consumers:", """  - name: metered
    match: {path_prefix: /metered}
    upstream: seed
    auth: {methods: [api_key]}
    rate_limit: {limit: 50, window: 1m, key: consumer, scope: global}
consumers:""")
    with open(f"{tmp}/quota.yaml", "w") as f:
        f.write(metered)
    rc, out, err = cli("config", "apply", f"{tmp}/quota.yaml")
    check(rc == 0 and "+ route metered" in out, f"a metered route applied ({out!r} {err!r})")
    rc, out, err = cli("keys", "create", "acme", "--json")
    key = json.loads(out)["key"] if rc == 0 else ""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # the route and the key reach both nodes
        codes = []
        for p in ports:
            req = urllib.request.Request(f"http://127.0.0.1:{p['proxy']}/metered/x",
                                         headers={"X-API-Key": key})
            try:
                codes.append(urllib.request.urlopen(req, timeout=5).status)
            except urllib.error.HTTPError as e:
                codes.append(e.code)
        if all(c != 404 and c != 401 for c in codes):
            break
        time.sleep(0.2)
    sent = 0
    for i in range(6):
        req = urllib.request.Request(f"http://127.0.0.1:{ports[i % 2]['proxy']}/metered/y",
                                     headers={"X-API-Key": key})
        try:
            urllib.request.urlopen(req, timeout=5)
        except urllib.error.HTTPError as e:
            pass  # 502: the seed upstream is not there; the quota counts all the same
        sent += 1
    deadline = time.monotonic() + 10
    usage = {}
    while time.monotonic() < deadline:
        req = urllib.request.Request(f"{b}/consumers/acme/usage",
                                     headers={"Authorization": "Bearer " + TOKEN})
        usage = json.loads(urllib.request.urlopen(req, timeout=5).read())
        q = next((q for q in usage.get("quotas", []) if q["route"] == "metered"), {})
        if q.get("count", 0) >= sent + 2 and len(q.get("by_node", {})) == 2:
            break
        time.sleep(0.2)
    check(q.get("count", 0) >= sent + 2 and q.get("limit") == 50 and len(q.get("by_node", {})) == 2
          and q.get("remaining") == 50 - q.get("count", 0),
          f"GET /consumers/acme/usage sums the quota over both nodes ({usage})")
    req = urllib.request.Request(f"{b}/consumers/nobody/usage",
                                 headers={"Authorization": "Bearer " + TOKEN})
    try:
        urllib.request.urlopen(req, timeout=5)
        status = 200
    except urllib.error.HTTPError as e:
        status = e.code
    check(status == 404, f"usage of an unknown consumer is a 404 ({status})")


if __name__ == "__main__":
    main()
