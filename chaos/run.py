#!/usr/bin/env python3
"""meridian's chaos suite: real clusters in network namespaces, real faults, invariants checked.

    chaos/run.py [--profile short|full] [--scenario NAME ...] [--binary build/bin/meridian]
                 [--out build/chaos] [--list] [--cleanup]

Needs root (namespaces, iptables, tc, tmpfs). Writes OUT/report.json, OUT/report.md and
OUT/timeline-<scenario>.svg; exits 0 when every verdict is PASS, 1 otherwise, 77 when it cannot
run here (not root, no network namespaces). Every namespace, process and mount it makes is
removed at the end, also on Ctrl-C or SIGTERM; `--cleanup` removes what a killed run left.
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import context as cx  # noqa: E402
from harness import netns  # noqa: E402
from harness import report  # noqa: E402
from harness import scenarios as sc  # noqa: E402

SKIP = 77


def log(text):
    print(text, flush=True)


def can_run():
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables, tc, tmpfs)"
    for tool in ("ip", "iptables", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup.sh installs it)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing (the delay forwarder needs TUN)"
    probe = f"mc{os.getpid()}-probe"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "cannot create network namespaces here"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--profile", choices=["short", "full"], default="full")
    ap.add_argument("--scenario", action="append", choices=sorted(sc.SCENARIOS))
    ap.add_argument("--binary", default=os.path.join(root, "build", "bin", "meridian"))
    ap.add_argument("--out", default=os.path.join(root, "build", "chaos"))
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--cleanup", action="store_true")
    ap.add_argument("--memory-mib", type=int, default=cx.MEMORY_MIB,
                    help="the memory-bounded invariant's RSS bound per node (default %(default)s;"
                         " an ASan build's shadow memory and quarantine need several times it)")
    args = ap.parse_args()
    cx.MEMORY_MIB = args.memory_mib
    if args.list:
        for name in sc.SCENARIOS:
            log(f"{name}{'  (short)' if name in sc.SHORT else ''}")
        return 0
    reason = can_run()
    if reason:
        log(f"chaos: skipped: {reason}")
        return SKIP
    netns.cleanup_stale(log)
    if args.cleanup:
        return 0
    names = args.scenario or (sc.SHORT if args.profile == "short" else list(sc.SCENARIOS))
    binary = os.path.abspath(args.binary)
    if not os.access(binary, os.X_OK):
        log(f"chaos: {binary} not found: build first (make build)")
        return 2

    # Ctrl-C, SIGTERM and SIGHUP unwind through the finally blocks below, which remove
    # every process, namespace and mount this run made.
    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, interrupted)

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    verdicts, timelines = [], []
    started = time.time()
    prefix = f"mc{os.getpid()}"
    try:
        for name in names:
            log(f"== {name}")
            workdir = os.path.join(out, "runs", name)
            shutil.rmtree(workdir, ignore_errors=True)
            topo = netns.Topology(prefix, sc.REGIONS, 1, sc.DELAYS_MS, sc.JITTER_MS)
            ctx = None
            try:
                topo.create()
                ctx = cx.Context(name, topo, binary, workdir, log)
                sc.SCENARIOS[name](ctx)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # a scenario that cannot finish is a failed verdict
                traceback.print_exc()
                verdicts.append({"scenario": name, "invariant": "scenario-completes",
                                 "measured": f"{type(e).__name__}: {e}", "bound": "completes",
                                 "verdict": "FAIL"})
            finally:
                if ctx is not None:
                    ctx.shutdown()
                    verdicts.extend(ctx.verdicts)
                    try:
                        report.timeline_svg(os.path.join(out, f"timeline-{name}.svg"), ctx)
                        timelines.append(name)
                    except Exception:
                        traceback.print_exc()
                topo.destroy()
    except KeyboardInterrupt as e:
        log(f"chaos: interrupted ({e}); cleaned up")
        report.write(out, verdicts, timelines)
        return 130
    report.write(out, verdicts, timelines)
    failed = [v for v in verdicts if v["verdict"] != "PASS"]
    log(f"chaos: {len(verdicts) - len(failed)} of {len(verdicts)} verdicts PASS in "
        f"{time.time() - started:.0f} s; report: {os.path.join(out, 'report.md')}")
    for v in failed:
        log(f"  FAIL {v['scenario']} / {v['invariant']}: {v['measured']} (bound {v['bound']})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
