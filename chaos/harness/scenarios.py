"""The scenarios: short stories of a fault and what the cluster must do about it.

Every scenario starts a fresh 3-region cluster (eu-west, us-east, ap-south; one node each) under
load — rate-limited traffic, traffic to healthy upstreams, traffic to a breaker-guarded upstream
and a config change every 0.4 s — injects its fault, heals, and checks the common invariants
(invariants.common) plus its own.
"""
import os
import signal
import subprocess
import time

from . import context as cx
from . import invariants as inv

REGIONS = ["eu-west", "us-east", "ap-south"]
DELAYS_MS = cx.DELAYS_MS
JITTER_MS = cx.JITTER_MS


def node_of(ctx, region):
    return next(n for n in ctx.cluster.nodes if n.host.region == region)


def flaky_target(ctx, region):
    return f"{node_of(ctx, region).host.ip}:9000"


def kill_node_under_load(ctx):
    ctx.start()
    victim = node_of(ctx, "us-east")
    others = [n for n in ctx.cluster.nodes if n is not victim]
    ctx.at(5)
    f = ctx.fault("kill -9", [victim.id])
    victim.kill9()
    took = inv.wait_seen(ctx, others, victim.id, {"dead"}, cx.DETECT_S)
    ctx.verdict("killed-node-detected-dead", f"{took:.1f} s" if took is not None else "never",
                f"<= {cx.DETECT_S:.0f} s", took is not None)
    ctx.at(20)
    victim.start()
    ctx.event(f"restarted {victim.id}")
    inv.membership_converges(ctx, "after restart")
    ctx.end_fault(f)
    ctx.at(30)
    ctx.stop_load()
    inv.common(ctx)


def partition_region(ctx):
    ctx.start()
    cut = node_of(ctx, "ap-south")
    eu = node_of(ctx, "eu-west")
    ctx.at(5)
    f = ctx.fault("partition ap-south", [cut.id], sides=2)
    rules = ctx.topo.isolate("ap-south")
    ctx.at(7)
    # An upstream fails while the region is cut off: eu-west opens its breaker, us-east follows
    # by gossip; ap-south can only learn it after the heal.
    bf = ctx.fault("upstream failure eu-west", [])
    ctx.cluster.set_flaky(eu.host, True)
    took = inv.wait_seen(ctx, [eu], cut.id, {"dead", "suspect"}, cx.DETECT_S)
    ctx.verdict("partitioned-region-detected", f"{took:.1f} s" if took is not None else "never",
                f"<= {cx.DETECT_S:.0f} s", took is not None)
    ctx.at(20)
    ctx.topo.heal(rules)
    ctx.end_fault(f)
    inv.membership_converges(ctx, "after heal")
    inv.breaker_everywhere(ctx, flaky_target(ctx, "eu-west"), {"open", "half_open"}, "open",
                           cx.BREAKER_OPEN_S)
    ctx.cluster.set_flaky(eu.host, False)
    ctx.end_fault(bf)
    inv.breaker_everywhere(ctx, flaky_target(ctx, "eu-west"), {"closed"}, "closed",
                           cx.BREAKER_CLOSE_S)
    ctx.at(34)
    ctx.stop_load()
    inv.common(ctx)


def one_way_partition(ctx):
    ctx.start()
    a, b = node_of(ctx, "eu-west"), node_of(ctx, "us-east")
    ctx.at(5)
    f = ctx.fault("one-way eu-west -> us-east", [])
    rules = [ctx.topo.block("eu-west", "us-east")]
    ctx.at(20)
    ctx.topo.heal(rules)
    ctx.end_fault(f)
    inv.membership_converges(ctx, "after heal")
    inv.no_false_dead(ctx, f["start"], time.time())
    ctx.at(28)
    ctx.stop_load()
    inv.common(ctx, include_faulted=(a.id, b.id))


def flaky_network(ctx):
    ctx.start()
    us = node_of(ctx, "us-east")
    ap = node_of(ctx, "ap-south")
    ctx.at(5)
    f = ctx.fault("15% loss between regions, ap-south capped at 512kbit", [])
    rules = ctx.topo.loss(0.15)
    ctx.topo.bandwidth(ap.host, "512kbit")
    ctx.at(7)
    bf = ctx.fault("upstream failure us-east", [])
    ctx.cluster.set_flaky(us.host, True)
    inv.breaker_everywhere(ctx, flaky_target(ctx, "us-east"), {"open", "half_open"}, "open",
                           cx.BREAKER_OPEN_S)
    ctx.at(15)
    ctx.cluster.set_flaky(us.host, False)
    ctx.end_fault(bf)
    inv.breaker_everywhere(ctx, flaky_target(ctx, "us-east"), {"closed"}, "closed",
                           cx.BREAKER_CLOSE_S)
    ctx.at(25)
    ctx.topo.heal(rules)
    ctx.topo.unbandwidth(ap.host)
    ctx.end_fault(f)
    inv.no_false_dead(ctx, f["start"], time.time())
    inv.membership_converges(ctx, "after heal")
    ctx.at(30)
    ctx.stop_load()
    inv.common(ctx)


def pause_node(ctx):
    ctx.start()
    victim = node_of(ctx, "us-east")
    others = [n for n in ctx.cluster.nodes if n is not victim]
    ctx.at(5)
    f = ctx.fault("SIGSTOP", [victim.id])
    victim.signal(signal.SIGSTOP)
    took = inv.wait_seen(ctx, others, victim.id, {"suspect", "dead"}, cx.DETECT_S)
    ctx.verdict("paused-node-suspected", f"{took:.1f} s" if took is not None else "never",
                f"<= {cx.DETECT_S:.0f} s", took is not None)
    ctx.at(17)
    victim.signal(signal.SIGCONT)
    ctx.event(f"SIGCONT {victim.id}")
    inv.membership_converges(ctx, "after resume")
    ctx.end_fault(f)
    ctx.at(27)
    ctx.stop_load()
    inv.common(ctx)


def rolling_restart(ctx):
    ctx.start()
    codes = []
    worst = 0.0
    ctx.at(4)
    for n in ctx.cluster.nodes:
        f = ctx.fault("restart (SIGTERM, drain)", [n.id])
        code = n.terminate(timeout=20)
        codes.append(code)
        n.start()
        took = ctx.cluster.wait_converged(cx.CONVERGE_S)
        worst = max(worst, took if took is not None else float("inf"))
        ctx.end_fault(f)
        ctx.event(f"{n.id} exited {code}, rejoined in "
                  f"{'%.1f s' % took if took is not None else 'NO'}")
        time.sleep(2)
    ctx.verdict("drained-exit-code-zero", f"exit codes {codes}", "all 0",
                all(c == 0 for c in codes))
    ctx.verdict("membership-converges-after-each-restart", f"max {worst:.1f} s",
                f"<= {cx.CONVERGE_S:.0f} s", worst <= cx.CONVERGE_S)
    time.sleep(3)
    ctx.stop_load()
    inv.common(ctx)


def split_brain_config(ctx):
    # ap-south's clock runs 5 s ahead. meridian measures every member's clock offset on probe
    # acks and corrects a node's clock to the median of the members' (cluster.clock_correction),
    # so once corrected ap-south's rate-limit windows line up with the others' (it takes
    # rate-limited load like every node) and its writes carry the real time of day. The load
    # starts once the correction is in place: before it (about a second after the node joins)
    # the node's windows are still off (docs/operations.md).
    skew_ms = 5000
    ap = node_of(ctx, "ap-south")
    eu = node_of(ctx, "eu-west")
    ap.clock_offset_ms = skew_ms
    measured = {}

    def wait_for_correction():
        start, correction, offset = time.time(), None, None
        while time.time() - start < 10:
            status, health = ap.try_admin("GET", "/cluster/health")
            if status == 200 and isinstance(health, dict):
                correction = health.get("clock_correction_ms")
            status, health = eu.try_admin("GET", "/cluster/health")
            if status == 200 and isinstance(health, dict):
                offset = health.get("clock_offsets_ms", {}).get(ap.id)
            if correction is not None and offset is not None and \
                    abs(correction + skew_ms) <= 250 and abs(offset - skew_ms) <= 250:
                break
            time.sleep(0.1)
        measured.update(correction=correction, offset=offset, took=time.time() - start)

    # The strict limit's owner may be the skewed node: its windows are off by what is left of
    # the skew (up to 250 ms), which the clients' windows cannot tell from an overshoot.
    ctx.strict_clock_skewed = True
    ctx.start(before_load=wait_for_correction)
    ctx.event(f"{ap.id} runs with node.clock_offset {skew_ms} ms")
    correction, offset = measured["correction"], measured["offset"]
    ctx.verdict("clock-skew-measured-and-corrected",
                f"{eu.id} measures {ap.id} {offset} ms ahead; {ap.id} corrects by {correction} ms "
                f"({measured['took']:.1f} s after the cluster formed)",
                f"within 250 ms of +{skew_ms} / -{skew_ms} within 10 s",
                correction is not None and offset is not None and
                abs(correction + skew_ms) <= 250 and abs(offset - skew_ms) <= 250)
    ctx.at(5)
    f = ctx.fault("partition ap-south", [ap.id], sides=2)
    rules = ctx.topo.isolate("ap-south")
    inv.wait_seen(ctx, [eu], ap.id, {"dead", "suspect"}, cx.DETECT_S)
    # Both sides change the same route, ap-south first, eu-west a second later. With ap-south's
    # clock corrected, last-writer-wins on hybrid timestamps picks the real last writer.
    written = {}
    for node, side in ((ap, "minority"), (eu, "majority")):
        body = {"match": {"path": "/contested"}, "upstream": "healthy",
                "response_headers": {"add": {"x-side": side}}}
        status, reply = node.try_admin("PUT", "/config/routes/contested", body)
        ctx.event(f"PUT contested={side} on {node.id}: {status}")
        if status == 200:
            written[side] = node.id
        time.sleep(1.0)
    ctx.at(18)
    ctx.topo.heal(rules)
    ctx.end_fault(f)
    inv.membership_converges(ctx, "after heal")
    start, values = time.time(), None
    while time.time() - start < cx.CONFIG_S:
        values = []
        for n in ctx.cluster.nodes:
            status, body = n.try_admin("GET", "/config")
            route = next((r for r in body.get("routes", []) if r["name"] == "contested"), None) \
                if status == 200 else None
            side = None
            if route:
                side = route.get("response_headers", {}).get("add", {}).get("x-side")
            values.append(side)
        if len(set(values)) == 1 and values[0] is not None:
            break
        time.sleep(0.2)
    took = time.time() - start
    ctx.verdict("conflicting-writes-converge", f"values {values} after {took:.1f} s",
                f"one value on every node within {cx.CONFIG_S:.0f} s",
                len(written) == 2 and len(set(values)) == 1 and values[0] is not None)
    ctx.verdict("last-writer-wins-by-hybrid-clock", f"winner {values[0]}",
                "majority (written a second after the minority; the minority's 5 s skew "
                "is corrected)", values[0] == "majority")
    ctx.at(26)
    ctx.stop_load()
    inv.common(ctx)


def disk_full(ctx):
    victim = node_of(ctx, "us-east")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", victim.data_dir],
                   check=True)
    ctx.mounts.append(victim.data_dir)
    ctx.start()
    ctx.at(5)
    f = ctx.fault("data_dir full", [victim.id])
    filler = os.path.join(victim.data_dir, "filler")
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=300"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    body = {"match": {"path": "/disk-full"}, "upstream": "healthy"}
    # The first small writes may still fit in the log's last page; within a few, one must fail.
    status, reply = None, None
    for i in range(10):
        name = f"on-full-disk-{i}"
        status, reply = victim.try_admin("PUT", f"/config/routes/{name}", body)
        if status == 200:
            ctx.acked[name] = (victim.id, time.time(), body)
        elif status is not None:
            break
        time.sleep(0.2)
    ctx.event(f"PUT on the full disk: {status} {str(reply)[:120]}")
    ctx.verdict("write-on-full-disk-refused-clearly", f"{status} {str(reply)[:100]}",
                "a 5xx JSON error, node keeps running",
                status is not None and status >= 500 and isinstance(reply, dict)
                and victim.running())
    ctx.at(15)
    os.unlink(filler)
    ctx.end_fault(f)
    start, status = time.time(), None
    while time.time() - start < 10:
        status, _ = victim.try_admin("PUT", "/config/routes/after-full-disk", body)
        if status == 200:
            ctx.acked["after-full-disk"] = (victim.id, time.time(), body)
            break
        time.sleep(0.2)
    took = time.time() - start
    ctx.verdict("writes-resume-after-space-freed",
                f"{took:.1f} s" if status == 200 else f"still {status} after 10 s", "<= 10 s",
                status == 200)
    ctx.at(24)
    ctx.stop_load()
    inv.common(ctx, include_faulted=(victim.id,))


SCENARIOS = {
    "kill-node-under-load": kill_node_under_load,
    "partition-region": partition_region,
    "one-way-partition": one_way_partition,
    "flaky-network": flaky_network,
    "pause-node": pause_node,
    "rolling-restart": rolling_restart,
    "split-brain-config": split_brain_config,
    "disk-full": disk_full,
}
SHORT = ["kill-node-under-load", "partition-region", "pause-node", "split-brain-config"]
