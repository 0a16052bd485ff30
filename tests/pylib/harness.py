"""What the Python tests of real processes share: named checks that all run (a failure is
reported, not raised), free loopback ports, waiting for an HTTP endpoint with a deadline, and
the exit status. Import it with sys.path set to this folder (see any test)."""

import os
import socket
import subprocess
import sys
import time
import urllib.request

FAILURES = []


def check(ok, what):
    """Records one claim and prints it as ok or FAIL."""
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        FAILURES.append(what)
    return ok


def free_port():
    """A loopback TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=30, alive=None):
    """Polls url until it answers 2xx (or `alive()` turns false); returns whether it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (alive is None or alive()):
        try:
            urllib.request.urlopen(url, timeout=1)
            return True
        except OSError:
            time.sleep(0.05)
    return False


def finish():
    """Prints the failure count and exits with it."""
    print(f"{len(FAILURES)} failure(s)")
    sys.exit(1 if FAILURES else 0)


def make_ca_and_server_cert(tmp, name):
    """Writes tmp/ca.pem (a test CA) and tmp/server.pem + server.key (for DNS name `name`,
    issued by that CA) with the openssl command."""
    import subprocess

    def run(*args):
        subprocess.run(args, check=True, capture_output=True)
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        "/CN=test CA", "-keyout", f"{tmp}/ca.key", "-out", f"{tmp}/ca.pem")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
        "-keyout", f"{tmp}/server.key", "-out", f"{tmp}/server.csr")
    with open(f"{tmp}/ext.cnf", "w") as f:
        f.write(f"subjectAltName=DNS:{name}\n")
    run("openssl", "x509", "-req", "-in", f"{tmp}/server.csr", "-CA", f"{tmp}/ca.pem", "-CAkey",
        f"{tmp}/ca.key", "-CAcreateserial", "-days", "2", "-extfile", f"{tmp}/ext.cnf",
        "-out", f"{tmp}/server.pem")


def write_private(path, text):
    """Writes text to path, readable by this user only (tokens, keyrings)."""
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def write_keyring(binary, path):
    """Writes a fresh cluster keyring (`meridian keygen`) to path, mode 0600."""
    write_private(path, subprocess.run([binary, "keygen"], capture_output=True, text=True,
                                       check=True).stdout)
