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


def _bindable(port):
    """Whether both a TCP and a UDP socket can bind 127.0.0.1:port right now."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port():
    """A loopback port (TCP and UDP) nobody uses now and no other test is handed before the range
    wraps: ports come in sequence from below the kernel's ephemeral range (so no outgoing
    connection and no bind to port 0 can take one between this call and the child's bind), and the
    sequence is shared by every test process through a locked counter file. The same scheme is in
    tests/integration/test_support.h and tests/ui/dashboard_test.js."""
    import fcntl
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral_low = int(f.read().split()[0])
    low, high = 10000, ephemeral_low
    if high - low < 1000:  # an unusual kernel setting: the kernel's choice below
        high = low
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "meridian-test-ports")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        high = low  # no shared counter here: the kernel's choice below
    if high == low:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        text = os.read(fd, 32).decode(errors="replace").strip()
        offset = int(text) if text.isdigit() else os.getpid()
        for _ in range(high - low):
            port = low + offset % (high - low)
            offset += 1
            if _bindable(port):
                break
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, str(offset % (high - low)).encode())
        return port
    finally:
        os.close(fd)


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
