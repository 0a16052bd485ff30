"""Named verdicts computed from what a scenario observed (client counts, admin API views)."""
import time

from . import cluster as cl
from . import context as cx


def rate_limit_bounded(ctx, policy="local_share"):
    """Admitted /limited requests in every whole window of the load, summed over all nodes'
    clients, stay within limit x (1+epsilon); inside a partition, within what the route's
    on_partition policy allows."""
    start, end = ctx.load_window
    per_window = {}
    for rows in ctx.cluster.read_load().values():
        for r in rows:
            if r["path"] == "/limited":
                w = r["t"] // cl.WINDOW_MS * cl.WINDOW_MS
                per_window[w] = per_window.get(w, 0) + r["s2xx"]
    worst, worst_ratio, windows = 0, 0.0, 0
    for w, admitted in per_window.items():
        if w / 1000 < start + cl.WINDOW_MS / 1000 or (w + cl.WINDOW_MS) / 1000 > end - 0.5:
            continue  # the first window and partial ones at the edges
        windows += 1
        sides = ctx.partition_sides(w / 1000, (w + cl.WINDOW_MS) / 1000)
        allowed = cl.LIMIT * cx.PARTITION_ALLOWANCE[policy](sides)
        ratio = admitted / allowed
        if ratio > worst_ratio:
            worst, worst_ratio = admitted, ratio
    bound = f"<= {cl.LIMIT * (1 + cx.EPSILON):.0f} per {cl.WINDOW_MS} ms window ({policy})"
    ctx.verdict("admitted-within-limit",
                f"max {worst} admitted in a window (x{worst_ratio:.3f} of allowed, {windows} windows)",
                bound, windows > 0 and worst_ratio <= 1 + cx.EPSILON)


def strict_never_over(ctx):
    """Admitted /strict requests (mode: strict, on_partition: fail_closed) in every window of the
    load, summed over all nodes' clients, never exceed the limit: not by one, whatever the fault.
    An answer counts in the window the owner decided it in (cluster.decided_windows: the answer's
    RateLimit-Reset), not the one it arrived in; a scenario that skews a node's clock on purpose
    skips this (ctx.strict_clock_skewed)."""
    if getattr(ctx, "strict_clock_skewed", False):
        return None
    per_window = {}
    for rows in ctx.cluster.read_load().values():
        for w, n in cl.decided_windows(rows, "/strict").items():
            per_window[w] = per_window.get(w, 0) + n
    worst = max(per_window.values()) if per_window else 0
    # The load must take some window to the limit, or the bound says nothing. (A window's last
    # admissions can be answered errors on the way back, so "reached" is 95 %.)
    full = sum(1 for v in per_window.values() if v >= 0.95 * cl.LIMIT)
    return ctx.verdict("strict-never-over-limit",
                       f"max {worst} admitted in a window ({len(per_window)} windows, {full} "
                       f"at 95 % of the limit or more)",
                       f"<= {cl.LIMIT} per {cl.WINDOW_MS} ms window, the limit reached",
                       bool(per_window) and worst <= cl.LIMIT and full > 0)


def latency_percentiles(ctx, path, include_faulted=False):
    """{node: (p50_ms, p99_ms, n)} of answered requests to path, from the load clients'
    histograms (a percentile is its histogram bucket's upper bound), while no fault was on
    anywhere (an owner cut off slows its askers too) unless include_faulted."""
    out = {}
    for node, rows in ctx.cluster.read_load().items():
        hist = {}
        for r in rows:
            if r["path"] != path:
                continue
            if not include_faulted and ctx.any_fault(r["t"] / 1000):
                continue
            for upper, n in r.get("lat", {}).items():
                hist[upper] = hist.get(upper, 0) + n
        total = sum(hist.values())
        if not total:
            continue
        order = sorted(hist, key=lambda u: float(u))

        def pick(q):
            seen = 0
            for u in order:
                seen += hist[u]
                if seen >= q * total:
                    return float(u)
            return float(order[-1])
        out[node] = (pick(0.5), pick(0.99), total)
    return out


def strict_added_latency(ctx, max_rtt_ms):
    """What a strict limit adds, per node, outside faults: the median of /strict against the
    median of /limited (decided locally; both go to the same upstreams, which may be in other
    regions, so the tails mostly measure those). A request pays a round trip to the key's owner
    and the owner's round trip to the nearest member that acknowledges its count: at most two
    round trips to the farthest region (+20 ms)."""
    strict, local = latency_percentiles(ctx, "/strict"), latency_percentiles(ctx, "/limited")
    worst, parts = 0.0, []
    for node in sorted(strict):
        if node not in local:
            continue
        added = strict[node][0] - local[node][0]
        worst = max(worst, added)
        parts.append(f"{node} p50 {strict[node][0]:g}/{local[node][0]:g} ms "
                     f"p99 {strict[node][1]:g}/{local[node][1]:g} ms")
    bound = 2 * max_rtt_ms + 20
    return ctx.verdict("strict-added-latency",
                       "strict/eventual: " + "; ".join(parts) + f" (worst p50 added {worst:g} ms)",
                       f"p50 added <= {bound:g} ms (two round trips to the farthest region + 20)",
                       bool(parts) and worst <= bound)


def healthy_success_rate(ctx, include_faulted=()):
    """/ok answers 2xx on nodes not under fault (nodes in include_faulted count throughout)."""
    ok = total = 0
    for node, rows in ctx.cluster.read_load().items():
        for r in rows:
            if r["path"] != "/ok":
                continue
            bucket = (r["t"] / 1000, (r["t"] + 100) / 1000)  # counted by completion time
            if node not in include_faulted and any(ctx.under_fault(node, t) for t in bucket):
                continue
            n = r["s2xx"] + r["s429"] + r["s5xx"] + r["other"] + r["err"]
            ok += r["s2xx"]
            total += n
    rate = ok / total if total else 0.0
    ctx.verdict("healthy-success-rate", f"{100 * rate:.3f} % of {total}",
                f">= {100 * cx.SUCCESS_RATE:.1f} %", total > 0 and rate >= cx.SUCCESS_RATE)


def no_unexpected_crash(ctx):
    ctx.sample_once()
    names = ", ".join(f"{n} exit {code}" for _, n, code in ctx.crashes)
    ctx.verdict("no-unexpected-crash", f"{len(ctx.crashes)} crashes{': ' + names if names else ''}",
                "0", not ctx.crashes)


def memory_bounded(ctx):
    rss = [s["rss"] for s in ctx.samples if s["rss"]]
    worst = max(rss) / 1048576 if rss else 0
    ctx.verdict("memory-bounded", f"max RSS {worst:.0f} MiB", f"<= {cx.MEMORY_MIB} MiB",
                bool(rss) and worst <= cx.MEMORY_MIB)


def config_converges(ctx):
    """Every acknowledged config change is on every node (no acknowledged write lost)."""
    wanted = set(ctx.acked)
    start = time.time()
    missing = None
    while time.time() - start < cx.CONFIG_S:
        missing = 0
        for n in ctx.cluster.nodes:
            status, body = n.try_admin("GET", "/config", timeout=2.0)
            names = {r["name"] for r in body.get("routes", [])} if status == 200 else set()
            missing += len(wanted - names)
        if missing == 0:
            break
        time.sleep(0.2)
    took = time.time() - start
    ctx.verdict("no-acknowledged-config-lost",
                f"{missing} of {len(wanted)} acknowledged writes missing on some node "
                f"({ctx.write_failures} writes refused) after {took:.1f} s",
                f"0 missing within {cx.CONFIG_S:.0f} s", missing == 0 and len(wanted) > 0)


def membership_converges(ctx, label="after heal"):
    took = ctx.cluster.wait_converged(cx.CONVERGE_S)
    ctx.event(f"membership converged {label}: "
              f"{'%.1f s' % took if took is not None else 'NO'}")
    ctx.verdict(f"membership-converges-{label.replace(' ', '-')}",
                f"{took:.1f} s" if took is not None else f"not within {cx.CONVERGE_S:.0f} s",
                f"<= {cx.CONVERGE_S:.0f} s", took is not None)
    return took


def wait_seen(ctx, observers, subject, states, limit_s):
    """Polls until every observer reports subject in one of states; returns seconds or None."""
    start = time.time()
    while time.time() - start < limit_s:
        if all((ctx.cluster.members_view(o) or {}).get(subject) in states for o in observers):
            return time.time() - start
        time.sleep(0.1)
    return None


def no_false_dead(ctx, since, until):
    """No node that was running and unpaused was reported dead by another node in [since, until]."""
    false_dead = set()
    for s in ctx.samples:
        if not (since <= s["t"] <= until) or not s["view"]:
            continue
        for member, state in s["view"].items():
            if state == "dead" and not ctx.under_fault(member, s["t"]):
                false_dead.add((s["node"], member))
    pairs = ", ".join(f"{a} saw {b}" for a, b in sorted(false_dead))
    ctx.verdict("no-false-dead", f"{len(false_dead)} false deaths{': ' + pairs if pairs else ''}",
                "0", not false_dead)


def breaker_everywhere(ctx, target, states, label, limit_s):
    """Polls /breakers on every running node until target's state is in states everywhere."""
    start = time.time()
    while time.time() - start < limit_s:
        good = True
        for n in ctx.cluster.nodes:
            status, body = n.try_admin("GET", "/breakers")
            got = "closed"
            if status == 200:
                for b in body.get("breakers", []):
                    if b.get("upstream") == "flaky" and b.get("target") == target:
                        got = b["state"]
            if status != 200 or got not in states:
                good = False
                break
        if good:
            took = time.time() - start
            ctx.event(f"breaker {target} {label} on every node after {took:.1f} s")
            return ctx.verdict(f"breaker-{label}-everywhere", f"{took:.1f} s", f"<= {limit_s:.0f} s",
                               True)
        time.sleep(0.1)
    return ctx.verdict(f"breaker-{label}-everywhere", f"not within {limit_s:.0f} s",
                       f"<= {limit_s:.0f} s", False)


def common(ctx, policy="local_share", include_faulted=()):
    """The invariants every scenario checks at its end (after stop_load)."""
    config_converges(ctx)
    rate_limit_bounded(ctx, policy)
    strict_never_over(ctx)
    strict_added_latency(ctx, 2 * (max(cx.DELAYS_MS.values()) + cx.JITTER_MS))
    healthy_success_rate(ctx, include_faulted)
    no_unexpected_crash(ctx)
    memory_bounded(ctx)
