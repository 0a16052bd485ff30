#!/usr/bin/python3
"""The Grafana dashboard (deploy/grafana/meridian.json) asks only for what meridian exports.

Starts a clustered node with a route, a health-checked upstream with a breaker and a rate limit,
sends a request, reads /metrics, and checks for every panel query: each meridian_ metric it names
is exported, and each label it filters or groups by is one that metric (or another metric of the
same query) carries. Then `promtool check rules` parses every query as PromQL. Also: the JSON is
what make_dashboard.py writes (the generator and the file do not drift apart).
usage: grafana_test.py SOURCE_DIR MERIDIAN_BINARY
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
from harness import FAILURES, check, finish, free_port, wait_http  # noqa: E402

TOKEN = "test-token-0123456789abcdef"


def exported(binary, tmp):
    proxy, admin, gossip = free_port(), free_port(), free_port()
    with open(f"{tmp}/admin.token", "w") as f:
        f.write(TOKEN + "\n")
    os.chmod(f"{tmp}/admin.token", 0o600)
    with open(f"{tmp}/cluster.keys", "w") as f:
        f.write(subprocess.run([binary, "keygen"], capture_output=True, text=True).stdout)
    os.chmod(f"{tmp}/cluster.keys", 0o600)
    with open(f"{tmp}/node.yaml", "w") as f:
        f.write(f"""node: {{id: g1, region: eu-west, data_dir: {tmp}/data}}
listen: {{proxy: 127.0.0.1:{proxy}, admin: 127.0.0.1:{admin}}}
admin: {{token_file: {tmp}/admin.token}}
cluster: {{bind: 127.0.0.1:{gossip}, seeds: [], keyring_file: {tmp}/cluster.keys}}
upstreams:
  - name: u
    targets: [127.0.0.1:1]
    circuit_breaker: {{}}
    health_check: {{interval: 100ms}}
routes:
  - name: r
    match: {{path_prefix: /}}
    upstream: u
    rate_limit: {{limit: 100, window: 1m, key: ip, scope: global}}
""")
    node = subprocess.Popen([binary, "run", "--config", f"{tmp}/node.yaml"],
                            stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{admin}/health", 20)
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{proxy}/x", timeout=5)
        except OSError:
            pass  # a 502: the upstream is not there; the counters move all the same
        req = urllib.request.Request(f"http://127.0.0.1:{admin}/metrics",
                                     headers={"Authorization": "Bearer " + TOKEN})
        text = urllib.request.urlopen(req, timeout=5).read().decode()
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(30)
    labels = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            labels.setdefault(line.split()[2], set())
            continue
        m = re.match(r"([a-z_0-9]+)(\{([^}]*)\})? ", line)
        if m:
            names = set(re.findall(r'([a-z_]+)="', m.group(3) or ""))
            labels.setdefault(m.group(1), set()).update(names)
    return labels


def main():
    source, binary = sys.argv[1], sys.argv[2]
    path = f"{source}/deploy/grafana/meridian.json"
    dashboard = json.load(open(path))
    sys.path.insert(0, f"{source}/deploy/grafana")
    import make_dashboard
    check(make_dashboard.dashboard() == dashboard,
          "meridian.json is what make_dashboard.py writes (re-run it after editing the panels)")
    with tempfile.TemporaryDirectory() as tmp:
        labels = exported(binary, tmp)
        exprs = []
        for panel in dashboard["panels"]:
            check("gridPos" in panel and panel.get("targets"), f"panel '{panel['title']}' is placed")
            for t in panel["targets"]:
                expr = t["expr"].replace("$node", ".*")
                exprs.append(expr)
                names = set(re.findall(r"meridian_[a-z0-9_]+", expr))
                base = {re.sub(r"_bucket$", "", n) if n.endswith("_bucket") else n for n in names}
                carried = set()
                for n in names:
                    key = n if n in labels else re.sub(r"_bucket$", "", n)
                    carried |= labels.get(n, set()) | labels.get(key + "_bucket", set())
                for n in base:
                    ok = n in labels or n + "_bucket" in labels
                    check(ok, f"'{panel['title']}': {n} is exported")
                used = set(re.findall(r"by \(([^)]*)\)", expr))
                wanted = {l.strip() for group in used for l in group.split(",")}
                wanted |= set(re.findall(r"([a-z_]+)=~?\"", expr))
                wanted -= {"instance", "le", "job"}
                if not carried:
                    continue  # no samples without such traffic (gRPC): names checked above
                check(wanted <= carried,
                      f"'{panel['title']}': labels {sorted(wanted)} are carried ({sorted(carried)})")
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"meridian_dashboard:q{i}", "expr": e} for i, e in enumerate(exprs)]}]}
        with open(f"{tmp}/rules.yml", "w") as f:
            json.dump(rules, f)  # JSON is YAML
        r = subprocess.run(["promtool", "check", "rules", f"{tmp}/rules.yml"], capture_output=True,
                           text=True)
        check(r.returncode == 0, f"promtool parses every query ({r.stdout}{r.stderr})")
    finish()


if __name__ == "__main__":
    main()
