#!/usr/bin/python3
"""Cluster-wide views when the admin APIs speak mutual TLS with a private CA.

Three nodes, each admin API on HTTPS with a certificate from a test CA and `client_ca` set (a
client must present a certificate from that CA, and the token). Their cluster-wide views
(GET /cluster/nodes, GET /analytics) ask the other nodes' /peer/ endpoints over that TLS:
- n0 trusts the CA (`peer_ca`) and presents its own admin certificate (serverAuth+clientAuth);
- n1's admin certificate is for serving only (serverAuth): it presents `peer_cert` (clientAuth);
- n2 sets no `peer_ca`: the system's store does not know the test CA, so its views miss the
  others and its log says why.
Bad peer TLS files stop a node at start with a clear message; `peer_cert` without `peer_key` is
a config error.
usage: peer_tls_test.py MERIDIAN_BINARY
"""

import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
import harness  # noqa: E402
from harness import (check, finish, free_port, write_keyring, write_private)  # noqa: E402

REGIONS = ["eu-west", "us-east", "ap-south"]
TOKEN = "peer-tls-admin-token-0123456789"


def openssl(tmp, *args):
    subprocess.run(["openssl", *args], cwd=tmp, check=True, capture_output=True)


def issue(tmp, name, usage):
    """tmp/name.pem + name.key, signed by the test CA, for IP 127.0.0.1 with extendedKeyUsage
    `usage`."""
    openssl(tmp, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr")
    with open(f"{tmp}/{name}.ext", "w") as f:
        f.write(f"subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n")
    openssl(tmp, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem")


def node_config(tmp, i, ports, tls):
    me = ports[i]
    seeds = ", ".join(f"127.0.0.1:{p['gossip']}" for j, p in enumerate(ports) if j != i)
    return f"""node: {{id: n{i}, region: {REGIONS[i]}, data_dir: {tmp}/d{i}}}
listen: {{proxy: 127.0.0.1:{me['proxy']}, admin: 127.0.0.1:{me['admin']}}}
admin:
  token_file: {tmp}/admin.token
  tls: {{{tls}}}
cluster: {{bind: 127.0.0.1:{me['gossip']}, seeds: [{seeds}], keyring_file: {tmp}/cluster.keys}}
upstreams:
  - name: app
    targets: [127.0.0.1:{me['proxy']}]
routes:
  - name: app
    match: {{path_prefix: /app}}
    upstream: app
"""


def main():
    binary = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        openssl(tmp, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-days", "2", "-subj", "/CN=meridian test CA", "-keyout", "ca.key",
                "-out", "ca.pem")
        issue(tmp, "n0", "serverAuth,clientAuth")
        issue(tmp, "n1", "serverAuth")
        issue(tmp, "n1-client", "clientAuth")
        issue(tmp, "n2", "serverAuth,clientAuth")
        issue(tmp, "operator", "clientAuth")
        write_private(f"{tmp}/admin.token", TOKEN + "\n")
        write_keyring(binary, f"{tmp}/cluster.keys")
        ports = [{"proxy": free_port(), "admin": free_port(), "gossip": free_port()}
                 for _ in range(3)]
        base = [f"cert: {tmp}/n{i}.pem, key: {tmp}/n{i}.key, client_ca: {tmp}/ca.pem"
                for i in range(3)]
        tls = [base[0] + f", peer_ca: {tmp}/ca.pem",
               base[1] + f", peer_ca: {tmp}/ca.pem, peer_cert: {tmp}/n1-client.pem, "
                         f"peer_key: {tmp}/n1-client.key",
               base[2]]

        # Bad files: the node refuses to start and says which; half a client identity is a
        # config error.
        for extra, says in [(f", peer_ca: {tmp}/missing.pem", "admin.tls.peer_ca"),
                            (f", peer_cert: {tmp}/n1-client.pem, peer_key: {tmp}/n0.key",
                             "admin.tls.peer_cert")]:
            with open(f"{tmp}/bad.yaml", "w") as f:
                f.write(node_config(tmp, 0, ports, base[0] + extra))
            r = subprocess.run([binary, "run", "--config", f"{tmp}/bad.yaml"], capture_output=True,
                               text=True, timeout=60)
            check(r.returncode != 0 and says in r.stderr,
                  f"unusable {says} stops the node with a message ({r.returncode}, "
                  f"{r.stderr.strip()[-200:]!r})")
        with open(f"{tmp}/half.yaml", "w") as f:
            f.write(node_config(tmp, 0, ports, base[0] + f", peer_cert: {tmp}/n1-client.pem"))
        r = subprocess.run([binary, "validate", f"{tmp}/half.yaml"],
                           capture_output=True, text=True, timeout=60)
        said = (r.stdout + r.stderr).strip()
        check(r.returncode != 0 and "peer_cert and admin.tls.peer_key go together" in said,
              f"peer_cert without peer_key is a config error ({said[-200:]!r})")

        ctx = ssl.create_default_context(cafile=f"{tmp}/ca.pem")
        ctx.load_cert_chain(f"{tmp}/operator.pem", f"{tmp}/operator.key")

        def admin(i, path):
            req = urllib.request.Request(f"https://127.0.0.1:{ports[i]['admin']}{path}")
            req.add_header("Authorization", "Bearer " + TOKEN)
            try:
                with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, None
            except (OSError, ValueError):
                return 0, None

        logs = [open(f"{tmp}/n{i}.log", "w") for i in range(3)]
        procs = []
        for i in range(3):
            with open(f"{tmp}/n{i}.yaml", "w") as f:
                f.write(node_config(tmp, i, ports, tls[i]))
            procs.append(subprocess.Popen([binary, "run", "--config", f"{tmp}/n{i}.yaml"],
                                          stdout=logs[i], stderr=logs[i]))

        def until(fn, timeout=30):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                v = fn()
                if v:
                    return v
                time.sleep(0.2)
            return fn()

        def answered(i):
            st, body = admin(i, "/cluster/nodes")
            if st != 200:
                return None
            return {n["id"]: n["answered"] for n in body["nodes"]}

        try:
            check(until(lambda: all(
                (admin(i, "/cluster/health")[1] or {}).get("members", {}).get("alive") == 3
                for i in range(3)), 60), "three nodes form a cluster")
            everyone = {"n0": True, "n1": True, "n2": True}
            got = until(lambda: answered(0) == everyone and answered(0))
            check(got == everyone, f"n0 (peer_ca, its own certificate) reaches every node ({got})")
            got = until(lambda: answered(1) == everyone and answered(1))
            check(got == everyone, f"n1 (peer_ca, peer_cert) reaches every node ({got})")
            st, a = admin(0, "/analytics?by=route&since=1h")
            check(st == 200 and sorted(a["nodes"]["answered"]) == ["n0", "n1", "n2"],
                  f"GET /analytics on n0 sums all three ({st}, {a and a.get('nodes')})")

            # n1's admin certificate alone is refused as a client one: peer_cert was needed.
            plain = ssl.create_default_context(cafile=f"{tmp}/ca.pem")
            plain.load_cert_chain(f"{tmp}/n1.pem", f"{tmp}/n1.key")
            req = urllib.request.Request(f"https://127.0.0.1:{ports[0]['admin']}/peer/health")
            try:
                urllib.request.urlopen(req, timeout=10, context=plain).read()
                refused = False
            except (OSError, ssl.SSLError):
                refused = True
            check(refused, "a serving-only certificate is refused as a client one")

            got = answered(2)
            check(got == {"n0": False, "n1": False, "n2": True},
                  f"n2 (no peer_ca) cannot verify the others ({got})")

            def logged():
                with open(f"{tmp}/n2.log") as f:
                    text = f.read()
                return "cluster-wide view without n0" in text and "https://127.0.0.1:" in text
            check(until(logged, 10), "n2's log says which node its view went without, and why")
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
            if harness.FAILURES:
                for i in range(3):
                    with open(f"{tmp}/n{i}.log") as f:
                        print(f"--- n{i}'s log, last lines:\n" + "".join(f.readlines()[-30:]))
    finish()


if __name__ == "__main__":
    main()
