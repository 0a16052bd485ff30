#!/usr/bin/python3
"""Tracing through meridian: W3C trace context to the upstream and OTLP/HTTP spans.

Runs an in-test OTLP collector (HTTP, POST /v1/traces, JSON) and an upstream that records the
traceparent and tracestate it received, then `meridian run` with a `tracing` section, and checks:
a request without traceparent starts a trace -- the upstream sees a traceparent whose trace id is
the one of the two spans the collector gets (the gateway's server span and the upstream call's
client span, the client span the parent the upstream saw, the server span its parent), with the
route, status and node; a request with a caller's traceparent joins it (same trace id, the
caller's span as the server span's parent) and tracestate passes unchanged; a malformed
traceparent starts a new trace; with sampling 0 a new trace is not recorded but still propagated
(flag 00), while a caller's sampled flag is honoured; a 404 (no route) is a server span alone;
the export counters show in /metrics. usage: tracing_test.py MERIDIAN_BINARY
"""

import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
from harness import FAILURES, check, finish, free_port, wait_http  # noqa: E402

TOKEN = "test-token-0123456789abcdef"
SPANS = []
SEEN = []  # (traceparent, tracestate) the upstream received
LOCK = threading.Lock()




class Collector(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        with LOCK:
            for rs in body["resourceSpans"]:
                resource = {a["key"]: a["value"]["stringValue"] for a in rs["resource"]["attributes"]}
                for ss in rs["scopeSpans"]:
                    for s in ss["spans"]:
                        s["resource"] = resource
                        s["attrs"] = {a["key"]: next(iter(a["value"].values()))
                                      for a in s["attributes"]}
                        SPANS.append(s)
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        with LOCK:
            SEEN.append((self.headers.get("traceparent"), self.headers.get("tracestate")))
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def serve(handler):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def get(port, path, headers=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def spans_of(trace_id, n, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with LOCK:
            found = [s for s in SPANS if s["traceId"] == trace_id]
        if len(found) >= n:
            return found
        time.sleep(0.05)
    return found


def run_node(binary, tmp, upstream_port, collector_port, sampling):
    proxy, admin = free_port(), free_port()
    with open(f"{tmp}/admin.token", "w") as f:
        f.write(TOKEN + "\n")
    os.chmod(f"{tmp}/admin.token", 0o600)
    with open(f"{tmp}/node-{sampling}.yaml", "w") as f:
        f.write(f"""node: {{id: tr-1, region: eu-west, data_dir: {tmp}/data-{sampling}}}
listen: {{proxy: 127.0.0.1:{proxy}, admin: 127.0.0.1:{admin}}}
admin: {{token_file: {tmp}/admin.token}}
tracing: {{otlp_endpoint: http://127.0.0.1:{collector_port}/v1/traces, sampling: {sampling},
          service_name: gateway-test, flush_interval: 100ms}}
upstreams:
  - name: app
    targets: [127.0.0.1:{upstream_port}]
routes:
  - name: app
    match: {{path_prefix: /app}}
    upstream: app
""")
    node = subprocess.Popen([binary, "run", "--config", f"{tmp}/node-{sampling}.yaml"],
                            stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{admin}/health", 20)
    return node, proxy, admin


def stop(node):
    node.send_signal(signal.SIGTERM)
    try:
        node.wait(30)
    except subprocess.TimeoutExpired:
        node.kill()
    return node.returncode


def main():
    binary = sys.argv[1]
    collector = serve(Collector)
    upstream = serve(Upstream)
    with tempfile.TemporaryDirectory() as tmp:
        node, port, admin = run_node(binary, tmp, upstream.server_address[1],
                                     collector.server_address[1], 1)
        try:
            sampled_story(port, admin)
        except Exception as e:
            check(False, f"the story runs to its end: {e!r}")
        check(stop(node) == 0, "meridian drains and exits 0")
        node, port, admin = run_node(binary, tmp, upstream.server_address[1],
                                     collector.server_address[1], 0)
        try:
            unsampled_story(port)
        except Exception as e:
            check(False, f"the story runs to its end: {e!r}")
        check(stop(node) == 0, "meridian drains and exits 0 (sampling 0)")
    finish()


TP = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])$")


def sampled_story(port, admin):
    check(get(port, "/app/one") == 200, "a request without traceparent is served")
    with LOCK:
        tp, _ = SEEN[-1]
    m = TP.match(tp or "")
    check(m is not None and m.group(3) == "01", f"the upstream sees a sampled traceparent ({tp})")
    trace, parent = m.group(1), m.group(2)
    spans = spans_of(trace, 2)
    server = next((s for s in spans if s["kind"] == 2), {})
    client = next((s for s in spans if s["kind"] == 3), {})
    check(len(spans) == 2 and server and client, f"two spans for the trace ({len(spans)})")
    check(client.get("spanId") == parent and client.get("parentSpanId") == server.get("spanId"),
          "the upstream's parent is the client span, whose parent is the gateway's span")
    check("parentSpanId" not in server, "the gateway's span is the root of a new trace")
    check(server.get("attrs", {}).get("meridian.route") == "app" and
          server["attrs"].get("http.response.status_code") == "200" and
          server["attrs"].get("meridian.node") == "tr-1" and
          server["attrs"].get("url.path") == "/app/one" and
          server.get("resource", {}).get("service.name") == "gateway-test",
          f"the server span names route, status, node, path and service ({server.get('attrs')})")
    check(client.get("attrs", {}).get("server.address", "").startswith("127.0.0.1:") and
          int(client["endTimeUnixNano"]) >= int(client["startTimeUnixNano"]) >=
          int(server["startTimeUnixNano"]) and
          int(server["endTimeUnixNano"]) >= int(client["endTimeUnixNano"]) - 5_000_000,
          "the client span lies within the server span and names the target")

    caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    caller = f"00-{caller_trace}-00f067aa0ba902b7-01"
    get(port, "/app/two", {"traceparent": caller, "tracestate": "vendor=abc,other=1"})
    with LOCK:
        tp, ts = SEEN[-1]
    m = TP.match(tp or "")
    check(m is not None and m.group(1) == caller_trace and m.group(2) != "00f067aa0ba902b7",
          f"a caller's trace is joined, with the gateway's span as the upstream's parent ({tp})")
    check(ts == "vendor=abc,other=1", f"tracestate passes unchanged ({ts})")
    spans = spans_of(caller_trace, 2)
    server = next((s for s in spans if s["kind"] == 2), {})
    check(server.get("parentSpanId") == "00f067aa0ba902b7",
          f"the gateway's span has the caller's span as parent ({server.get('parentSpanId')})")

    get(port, "/app/three", {"traceparent": "00-ZZZ-bad"})
    with LOCK:
        tp, _ = SEEN[-1]
    m = TP.match(tp or "")
    check(m is not None and m.group(1) != caller_trace, f"a malformed traceparent starts anew ({tp})")

    check(get(port, "/nowhere") == 404, "an unrouted request is answered 404")
    deadline = time.monotonic() + 10
    found = []
    while time.monotonic() < deadline and not found:
        with LOCK:
            found = [s for s in SPANS if s["attrs"].get("url.path") == "/nowhere"]
        time.sleep(0.05)
    check(len(found) == 1 and found[0]["kind"] == 2 and
          found[0]["attrs"].get("http.response.status_code") == "404",
          "a 404 is one server span")
    req = urllib.request.Request(f"http://127.0.0.1:{admin}/metrics",
                                 headers={"Authorization": "Bearer " + TOKEN})
    text = urllib.request.urlopen(req, timeout=5).read().decode()
    m = re.search(r"^meridian_tracing_spans_exported_total (\d+)", text, re.M)
    check(m is not None and int(m.group(1)) >= 7, f"spans exported are counted ({m and m.group(1)})")


def unsampled_story(port):
    with LOCK:
        before = len(SPANS)
    get(port, "/app/quiet")
    with LOCK:
        tp, _ = SEEN[-1]
    m = TP.match(tp or "")
    check(m is not None and m.group(3) == "00", f"sampling 0: still propagated, not sampled ({tp})")
    caller_trace = "0af7651916cd43dd8448eb211c80319c"
    get(port, "/app/loud", {"traceparent": f"00-{caller_trace}-b7ad6b7169203331-01"})
    spans = spans_of(caller_trace, 2)
    check(len(spans) == 2, f"a caller's sampled flag is honoured with sampling 0 ({len(spans)})")
    time.sleep(0.5)  # the flush interval is 100 ms: anything else would have arrived
    with LOCK:
        extra = [s for s in SPANS[before:] if s["traceId"] != caller_trace]
    check(not extra, f"the unsampled trace exported nothing ({len(extra)})")


if __name__ == "__main__":
    main()
