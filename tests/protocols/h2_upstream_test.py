#!/usr/bin/python3
"""HTTP/2 to upstreams through meridian, against nghttp2's own server (nghttpd).

Two nghttpd origins serve the same files, one as h2c and one as h2 over TLS (a certificate from
a test CA, checked by meridian against ca_file). Clients speak HTTP/1.1 (curl) and HTTP/2 (curl,
h2load) to meridian. Checks: files byte-exact through both, larger than every flow-control
window; a request body larger than the stream window goes up; 2000 requests 200 at a time on one
client connection multiplex onto a few upstream connections (max_streams_per_connection); the
upstream's health checked over HTTP/2; an upstream that dies is noticed and one that comes back
is used again on a new connection; the node drains and exits 0.
usage: h2_upstream_test.py MERIDIAN_BINARY
"""

import hashlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
from harness import (FAILURES, check, finish, free_port,  # noqa: E402
                     make_ca_and_server_cert, wait_http)

TOKEN = "test-token-0123456789abcdef"


def wait_port(port, deadline=10):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def curl(*args, data=None):
    r = subprocess.run(["curl", "-s", "-S", "--max-time", "30", *args], capture_output=True,
                       input=data)
    return r.returncode, r.stdout, r.stderr.decode()


def metric(admin_port, name):
    req = urllib.request.Request(f"http://127.0.0.1:{admin_port}/metrics",
                                 headers={"Authorization": "Bearer " + TOKEN})
    total = 0.0
    for line in urllib.request.urlopen(req, timeout=5).read().decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.split()[-1])
    return total




def config(tmp, h2c_port, h2_port, proxy_port, admin_port):
    return f"""node: {{id: h2u-1, region: eu-west, data_dir: {tmp}/data}}
listen: {{proxy: 127.0.0.1:{proxy_port}, admin: 127.0.0.1:{admin_port}}}
admin: {{token_file: {tmp}/admin.token}}
upstreams:
  - name: h2c_origin
    protocol: h2c
    targets: [{{address: 127.0.0.1:{h2c_port}}}]
    pool: {{max_streams_per_connection: 100}}
    health_check: {{path: /small.txt, interval: 200ms, timeout: 1s, unhealthy_after: 2, healthy_after: 1}}
  - name: h2_origin
    protocol: h2
    tls: {{ca_file: {tmp}/ca.pem, server_name: origin.test}}
    targets: [{{address: 127.0.0.1:{h2_port}}}]
routes:
  - name: h2c
    match: {{path_prefix: /h2c/}}
    strip_prefix: /h2c
    upstream: h2c_origin
  - name: h2
    match: {{path_prefix: /h2/}}
    strip_prefix: /h2
    upstream: h2_origin
"""


def start_nghttpd(tmp, port, tls):
    args = ["nghttpd", "-d", f"{tmp}/www", str(port)]
    if tls:
        args += [f"{tmp}/server.key", f"{tmp}/server.pem"]
    else:
        args.insert(1, "--no-tls")
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main():
    binary = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        make_ca_and_server_cert(tmp, "origin.test")
        os.makedirs(f"{tmp}/www")
        big = os.urandom(5_000_000)
        with open(f"{tmp}/www/big.bin", "wb") as f:
            f.write(big)
        with open(f"{tmp}/www/small.txt", "w") as f:
            f.write("small file\n")
        with open(f"{tmp}/admin.token", "w") as f:
            f.write(TOKEN + "\n")
        os.chmod(f"{tmp}/admin.token", 0o600)
        h2c_port, h2_port = free_port(), free_port()
        origins = [start_nghttpd(tmp, h2c_port, False), start_nghttpd(tmp, h2_port, True)]
        check(wait_port(h2c_port) and wait_port(h2_port), "nghttpd origins listen")
        proxy_port, admin_port = free_port(), free_port()
        with open(f"{tmp}/node.yaml", "w") as f:
            f.write(config(tmp, h2c_port, h2_port, proxy_port, admin_port))
        log = open(f"{tmp}/node.log", "w")
        node = subprocess.Popen([binary, "run", "--config", f"{tmp}/node.yaml"], stderr=log)
        try:
            wait_http(f"http://127.0.0.1:{admin_port}/health", 30, lambda: node.poll() is None)
            check(node.poll() is None, "meridian runs")
            try:
                tests(proxy_port, admin_port, tmp, big, origins, h2c_port)
            except Exception as e:
                check(False, f"the story runs to its end: {e!r}")
        finally:
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
            try:
                node.wait(30)
            except subprocess.TimeoutExpired:
                node.kill()
            check(node.returncode == 0, f"meridian drains and exits 0 ({node.returncode})")
            log.close()
            for o in origins:
                o.kill()
                o.wait()
            if FAILURES:
                print(open(f"{tmp}/node.log").read()[-6000:])
    finish()


def tests(port, admin_port, tmp, big, origins, h2c_port):
    base = f"http://127.0.0.1:{port}"
    digest = hashlib.sha256(big).hexdigest()
    for prefix in ("h2c", "h2"):
        rc, out, err = curl("--http1.1", f"{base}/{prefix}/big.bin")
        check(rc == 0 and hashlib.sha256(out).hexdigest() == digest,
              f"HTTP/1.1 client, {prefix} upstream: 5 MB byte-exact ({len(out)} {err})")
        rc, out, err = curl("--http2-prior-knowledge", f"{base}/{prefix}/big.bin")
        check(rc == 0 and hashlib.sha256(out).hexdigest() == digest,
              f"HTTP/2 client, {prefix} upstream: 5 MB byte-exact ({len(out)} {err})")
        rc, out, err = curl("--http1.1", "-i", f"{base}/{prefix}/small.txt")
        text = out.decode("latin-1")
        check(text.startswith("HTTP/1.1 200") and "content-length: 11" in text.lower() and
              text.endswith("small file\n"), f"{prefix}: the upstream's length is kept ({text!r})")
    # A request body past the stream window (256 KiB) and the connection's.
    upload = os.urandom(3_000_000)
    rc, out, err = curl("--http1.1", "-o", "/dev/null", "-w", "%{http_code}", "--data-binary", "@-",
                        f"{base}/h2c/small.txt", data=upload)
    check(rc == 0 and out.decode() in ("200", "404", "405"),
          f"a 3 MB request body goes up an h2c stream ({out!r} {err})")

    opened = metric(admin_port, "meridian_upstream_connections_opened_total")
    r = subprocess.run(["h2load", "-n", "2000", "-c", "1", "-m", "200", f"{base}/h2c/small.txt"],
                       capture_output=True, text=True, timeout=120)
    check("2000 succeeded" in r.stdout and "2000 2xx" in r.stdout,
          "h2load: 2000 requests, 200 at a time, all 2xx through an h2c upstream: " +
          " ".join(l for l in r.stdout.splitlines() if "requests:" in l or "status" in l))
    more = metric(admin_port, "meridian_upstream_connections_opened_total") - opened
    check(more <= 2, f"200 concurrent streams share upstream connections ({more:.0f} opened)")

    # The upstream dies: requests fail (502/503) and its health check takes it out; it comes
    # back on the same port: served again, on a new connection.
    origins[0].kill()
    origins[0].wait()
    deadline = time.monotonic() + 10
    code = ""
    while time.monotonic() < deadline:
        rc, out, _ = curl("-o", "/dev/null", "-w", "%{http_code}", f"{base}/h2c/small.txt")
        code = out.decode()
        if code == "503":
            break
        time.sleep(0.1)
    check(code == "503", f"a dead h2c upstream is noticed by its health check ({code})")
    origins[0] = start_nghttpd(tmp, h2c_port, False)
    wait_port(h2c_port)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rc, out, _ = curl("-o", "/dev/null", "-w", "%{http_code}", f"{base}/h2c/small.txt")
        code = out.decode()
        if code == "200":
            break
        time.sleep(0.1)
    check(code == "200", f"the upstream back: served again ({code})")


if __name__ == "__main__":
    main()
