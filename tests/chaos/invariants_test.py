#!/usr/bin/env python3
"""The chaos suite's verdicts on synthetic observations: each invariant fails on a run that breaks
it and passes on one that does not, so a broken cluster cannot slip through a lenient check.

    invariants_test.py REPO_ROOT
"""
import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(sys.argv[1] if len(sys.argv) > 1 else ".", "chaos"))

from harness import cluster as cl  # noqa: E402
from harness import context as cx  # noqa: E402
from harness import invariants as inv  # noqa: E402
from harness import report  # noqa: E402

T0 = 1_800_000_000.0  # a window-aligned Unix time (s)


class FakeNode:
    def __init__(self, node_id):
        self.id = node_id
        self.proc = None

    def running(self):
        return True

    def rss_bytes(self):
        return 30 << 20


class FakeCluster:
    def __init__(self, load):
        self.load = load
        self.nodes = [FakeNode(n) for n in load]

    def read_load(self):
        return self.load


def make_ctx(load, faults=()):
    ctx = cx.Context.__new__(cx.Context)
    ctx.name = "synthetic"
    ctx.log = lambda _text: None
    ctx.cluster = FakeCluster(load)
    ctx.verdicts, ctx.events, ctx.samples, ctx.crashes = [], [], [], []
    ctx.faults = list(faults)
    ctx.load_window = (T0, T0 + 60)
    return ctx


def limited_rows(per_window):
    """Spreads each window's admissions over its 100 ms buckets (as the load clients count)."""
    rows = []
    buckets = cl.WINDOW_MS // 100
    for w, admitted in enumerate(per_window):
        start = int(T0 * 1000) + w * cl.WINDOW_MS
        for b in range(buckets):
            n = admitted // buckets + (1 if b < admitted % buckets else 0)
            rows.append({"t": start + b * 100, "path": "/limited", "s2xx": n, "s429": 5,
                         "s5xx": 0, "other": 0, "err": 0})
    return rows


def ok_rows(node_errors_at=None, n=600):
    rows = []
    for i in range(n):
        t = int(T0 * 1000) + i * 100
        err = 1 if node_errors_at and node_errors_at[0] <= t / 1000 <= node_errors_at[1] else 0
        rows.append({"t": t, "path": "/ok", "s2xx": 3 - err, "s429": 0, "s5xx": 0, "other": 0,
                     "err": err})
    return rows


def verdict(ctx, name):
    return next(v for v in ctx.verdicts if v["invariant"] == name)["verdict"]


class rate_limit(unittest.TestCase):
    def test_windows_at_the_limit_pass(self):
        ctx = make_ctx({"a": limited_rows([250] * 12), "b": limited_rows([250] * 12)})
        inv.rate_limit_bounded(ctx)
        self.assertEqual(verdict(ctx, "admitted-within-limit"), "PASS")

    def test_one_window_over_limit_times_one_plus_epsilon_fails(self):
        over = int(cl.LIMIT * (1 + cx.EPSILON)) + 10
        ctx = make_ctx({"a": limited_rows([250] * 5 + [over - 250] + [250] * 6),
                        "b": limited_rows([250] * 12)})
        inv.rate_limit_bounded(ctx)
        self.assertEqual(verdict(ctx, "admitted-within-limit"), "FAIL")
        self.assertIn(f"max {over}", ctx.verdicts[0]["measured"])

    def test_partition_allowance_follows_the_policy(self):
        partition = {"kind": "partition", "nodes": ["b"], "start": T0, "end": T0 + 60, "sides": 2}
        load = {"a": limited_rows([500] * 12), "b": limited_rows([500] * 12)}
        ctx = make_ctx(load, [partition])
        inv.rate_limit_bounded(ctx, "fail_open")  # each side may admit the whole limit
        self.assertEqual(verdict(ctx, "admitted-within-limit"), "PASS")
        ctx = make_ctx(load, [partition])
        inv.rate_limit_bounded(ctx, "local_share")  # the sides share one limit
        self.assertEqual(verdict(ctx, "admitted-within-limit"), "FAIL")


class success_rate(unittest.TestCase):
    def test_errors_on_a_node_under_fault_do_not_count(self):
        fault = {"kind": "kill -9", "nodes": ["b"], "start": T0 + 10, "end": T0 + 20, "sides": 1}
        ctx = make_ctx({"a": ok_rows(), "b": ok_rows((T0 + 10, T0 + 20))}, [fault])
        inv.healthy_success_rate(ctx)
        self.assertEqual(verdict(ctx, "healthy-success-rate"), "PASS")

    def test_errors_on_a_node_not_under_fault_fail(self):
        ctx = make_ctx({"a": ok_rows(), "b": ok_rows((T0 + 10, T0 + 20))})
        inv.healthy_success_rate(ctx)
        self.assertEqual(verdict(ctx, "healthy-success-rate"), "FAIL")


class membership(unittest.TestCase):
    def test_a_running_node_reported_dead_is_a_false_death(self):
        ctx = make_ctx({"a": [], "b": []})
        ctx.samples = [{"t": T0 + 5, "node": "a", "view": {"a": "alive", "b": "dead"}, "rss": 1}]
        inv.no_false_dead(ctx, T0, T0 + 60)
        self.assertEqual(verdict(ctx, "no-false-dead"), "FAIL")

    def test_a_killed_node_reported_dead_is_not(self):
        fault = {"kind": "kill -9", "nodes": ["b"], "start": T0, "end": T0 + 30, "sides": 1}
        ctx = make_ctx({"a": [], "b": []}, [fault])
        ctx.samples = [{"t": T0 + 5, "node": "a", "view": {"a": "alive", "b": "dead"}, "rss": 1}]
        inv.no_false_dead(ctx, T0, T0 + 60)
        self.assertEqual(verdict(ctx, "no-false-dead"), "PASS")


class crashes_and_memory(unittest.TestCase):
    def test_an_unexpected_exit_fails(self):
        ctx = make_ctx({"a": []})
        ctx.crashes = [(T0 + 3, "a", -6)]
        ctx.sample_once = lambda: None
        inv.no_unexpected_crash(ctx)
        self.assertEqual(verdict(ctx, "no-unexpected-crash"), "FAIL")

    def test_resident_memory_over_the_bound_fails(self):
        ctx = make_ctx({"a": []})
        ctx.samples = [{"t": T0, "node": "a", "rss": (cx.MEMORY_MIB + 1) << 20}]
        inv.memory_bounded(ctx)
        self.assertEqual(verdict(ctx, "memory-bounded"), "FAIL")


class report_files(unittest.TestCase):
    def test_report_lists_every_verdict_with_measured_and_bound(self):
        verdicts = [{"scenario": "s", "invariant": "i", "measured": "1 s", "bound": "<= 2 s",
                     "verdict": "PASS"},
                    {"scenario": "s", "invariant": "j", "measured": "3", "bound": "0",
                     "verdict": "FAIL"}]
        with tempfile.TemporaryDirectory() as d:
            report.write(d, verdicts, [])
            with open(os.path.join(d, "report.json")) as f:
                self.assertEqual(json.load(f), verdicts)
            with open(os.path.join(d, "report.md")) as f:
                md = f.read()
            self.assertIn("1 of 2 verdicts PASS", md)
            self.assertIn("| s | j | 3 | 0 | **FAIL** |", md)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=1)
