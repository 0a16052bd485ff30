#!/usr/bin/python3
"""`meridian demo` shows what it promises: runs the demo as a child, takes the lines it prints to
paste, runs them with bash exactly as a newcomer would, and checks what each shows -- a route put
on eu-west served by ap-south, one limit of 5 counted across the three regions (five 200s, then
429s; the cluster-wide view names every node), a breaker opened by eu-west's failures honoured by
ap-south, `meridian members` listing the three regions -- and that Ctrl-C stops it cleanly.
The demo listens on fixed ports (8080-8082, 9901-9903, 7946-7948): ctest runs this test alone
(RESOURCE_LOCK). usage: demo_test.py MERIDIAN_BINARY
"""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

FAILURES = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        FAILURES.append(what)


def main():
    binary = os.path.abspath(sys.argv[1])
    env = dict(os.environ)  # the pasted lines name the binary by its full path
    # stderr to a file, not a pipe nobody reads until the end: a full pipe would stall the demo.
    log = tempfile.TemporaryFile(mode="w+")
    demo = subprocess.Popen([binary, "demo"], stdout=subprocess.PIPE, stderr=log, text=True,
                            env=env)
    lines = []
    done = threading.Event()

    def read():
        for line in demo.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("Press Ctrl-C"):
                done.set()
        done.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        check(done.wait(60) and any(l.startswith("token: ") for l in lines),
              "the demo starts and prints its token")
        check(any(l.startswith("curl ") for l in lines), "a ready-to-paste curl line")
        commands = [l for l in lines if l.startswith(("curl ", "for ", "MERIDIAN_TOKEN="))]

        def run(cmd):
            r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60,
                               env=env)
            return r.stdout

        # Wait until the three nodes see each other (the demo prints before gossip settles).
        members_cmd = next(c for c in commands if " members --admin" in c)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            out = run(members_cmd)
            if out.count(" alive ") + out.count(" alive\n") >= 3 or out.count("alive") >= 3:
                break
            time.sleep(0.3)
        check(all(r in out for r in ("eu-west", "us-east", "ap-south")) and out.count("alive") == 3,
              f"meridian members lists the three regions alive ({out!r})")

        put = next(c for c in commands if "-X PUT" in c and "/config/routes/hello" in c)
        get = next(c for c in commands if "/hello/world" in c)
        check('"version"' in run(put), "the route is put on eu-west")
        deadline = time.monotonic() + 20
        out = ""
        while time.monotonic() < deadline:
            out = run(get)
            if '"service": "demo"' in out:
                break
            time.sleep(0.2)
        check('"path": "/hello/world"' in out, f"ap-south serves the route eu-west got ({out[:120]!r})")

        loop = next(c for c in commands if "/limited" in c and c.startswith("for "))
        codes = run(loop).split()
        check(codes == ["200"] * 5 + ["429"] * 2,
              f"one limit of 5 across three regions: five 200s, then 429 ({codes})")
        view = json.loads(run(next(c for c in commands if "/ratelimits/limited" in c)))
        check(view.get("count", 0) >= 5 and len(view.get("by_node", {})) == 3,
              f"the cluster-wide view counts every node's admissions ({view})")

        fail = next(c for c in commands if "/flaky/status/503" in c)
        run(fail)
        breakers_cmd = next(c for c in commands if c.rstrip().endswith("/breakers"))
        deadline = time.monotonic() + 20
        ok = False
        while time.monotonic() < deadline and not ok:
            b = json.loads(run(breakers_cmd) or "{}")
            ok = any(x.get("upstream") == "flaky" and x.get("state") == "open" and
                     x.get("origin") == "eu-1" for x in b.get("breakers", []))
            if not ok:
                time.sleep(0.2)
        check(ok, f"ap-south's /breakers shows flaky open, set by eu-1 ({b})")
        code = run(next(c for c in commands if "/flaky/ok" in c)).strip()
        check(code == "503", f"ap-south honours the breaker: 503 ({code})")
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(30)
        except subprocess.TimeoutExpired:
            demo.kill()
        check(demo.returncode == 0, f"Ctrl-C stops the demo cleanly ({demo.returncode})")
        if FAILURES:
            print("\n".join(lines))
            log.seek(0)
            print(log.read()[-3000:])
    print(f"{len(FAILURES)} failure(s)")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
