"""What the Python tests of real processes share: named checks that all run (a failure is
reported, not raised), free loopback ports, waiting for an HTTP endpoint with a deadline, and
the exit status. Import it with sys.path set to this folder (see any test)."""

import socket
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
