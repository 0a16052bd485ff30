#!/usr/bin/python3
"""gRPC through meridian with real clients and servers (Debian's python3-grpcio).

Starts two grpcio servers of the same service -- one plain (the upstream speaks h2c), one over
TLS (the upstream speaks h2, chosen by ALPN, its certificate checked against a CA file) -- and
`meridian run` as a child, then calls through the gateway with a grpcio client (h2c with prior
knowledge) and checks: unary, client, server and bidirectional streaming; 4 MiB messages both
ways; metadata both ways (initial and trailing); status codes and messages; a deadline shorter
than the method (DEADLINE_EXCEEDED, and the upstream call ends); 200 concurrent calls on one
connection; the gateway's own errors as trailers-only gRPC responses (no route: UNIMPLEMENTED,
a per-method rate limit: RESOURCE_EXHAUSTED, a missing API key: UNAUTHENTICATED); grpc-status in
the metrics and the access log; an upstream whose certificate does not verify is not called;
gRPC-Web (binary and text) from an HTTP/1.1 client translated to gRPC and back, trailers as the
body's last frame. usage: grpc_test.py MERIDIAN_BINARY
"""

import base64
import http.client
import http.server
import ssl
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent import futures

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
from harness import (FAILURES, check, finish, free_port,  # noqa: E402
                     make_ca_and_server_cert, wait_http)

TOKEN = "test-token-0123456789abcdef"
BIG = 4 * 1024 * 1024
OPTIONS = [("grpc.max_send_message_length", 16 * 1024 * 1024),
           ("grpc.max_receive_message_length", 16 * 1024 * 1024)]




# --- the service: raw bytes in and out (no generated code needed) -----------------------------

SLOW_ENDED = threading.Event()


def unary(request, context):
    meta = dict(context.invocation_metadata())
    if request.startswith(b"status:"):
        code = int(request[7:])
        context.abort(grpc.StatusCode(next(c for c in grpc.StatusCode if c.value[0] == code).value),
                      f"asked for status {code}")
    context.send_initial_metadata((("x-echo", meta.get("x-meta", "-")),
                                   ("x-upstream", meta.get("x-which", "plain"))))
    context.set_trailing_metadata((("x-trailer", "t-" + meta.get("x-meta", "-")),))
    return request


def slow(request, context):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and context.is_active():
        time.sleep(0.02)
    if not context.is_active():
        SLOW_ENDED.set()
    return request


def pause(request, context):
    time.sleep(0.3)
    return request


def client_stream(requests, context):
    parts = [r for r in requests]
    return b"%d:" % len(parts) + b"".join(parts)


def server_stream(request, context):
    count, size = (int(x) for x in request.split(b":"))
    for i in range(count):
        yield struct.pack(">I", i) + b"x" * size


def bidi(requests, context):
    for r in requests:
        yield b"echo:" + r


def identity(x):
    return x


SERVING = {"value": True}


def health_check(request, context):
    # grpc.health.v1.HealthCheckResponse{status}: SERVING 1, NOT_SERVING 2.
    return b"\x08\x01" if SERVING["value"] else b"\x08\x02"


def handlers(which):
    def tagged_unary(request, context):
        return unary(request, context)
    methods = {
        "Unary": grpc.unary_unary_rpc_method_handler(tagged_unary, identity, identity),
        "Slow": grpc.unary_unary_rpc_method_handler(slow, identity, identity),
        "Pause": grpc.unary_unary_rpc_method_handler(pause, identity, identity),
        "Limited": grpc.unary_unary_rpc_method_handler(unary, identity, identity),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream, identity, identity),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream, identity, identity),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi, identity, identity),
    }
    health = {"Check": grpc.unary_unary_rpc_method_handler(health_check, identity, identity)}
    return (grpc.method_handlers_generic_handler("test.Echo", methods),
            grpc.method_handlers_generic_handler("grpc.health.v1.Health", health))


def start_server(port, creds=None):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=300), options=OPTIONS,
                         maximum_concurrent_rpcs=1000)
    server.add_generic_rpc_handlers(handlers("plain"))
    if creds:
        server.add_secure_port(f"127.0.0.1:{port}", creds)
    else:
        server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


# --- the node ----------------------------------------------------------------------------------

def config(tmp, plain_port, tls_port, https_port, proxy_port, admin_port):
    return f"""node: {{id: grpc-1, region: eu-west, data_dir: {tmp}/data}}
listen: {{proxy: 127.0.0.1:{proxy_port}, admin: 127.0.0.1:{admin_port}}}
admin: {{token_file: {tmp}/admin.token}}
log: {{access_log: {{enabled: true, path: {tmp}/access.log}}}}
upstreams:
  - name: grpc
    protocol: h2c
    targets: [{{address: 127.0.0.1:{plain_port}}}]
    pool: {{max_streams_per_connection: 100}}
    health_check: {{grpc: true, interval: 200ms, timeout: 2s, unhealthy_after: 2, healthy_after: 2}}
  - name: grpc_tls
    protocol: h2
    tls: {{ca_file: {tmp}/ca.pem, server_name: localhost}}
    targets: [{{address: 127.0.0.1:{tls_port}}}]
    health_check: {{path: /healthz, interval: 200ms, timeout: 1s, unhealthy_after: 2}}
  - name: https_origin
    tls: {{ca_file: {tmp}/ca.pem, server_name: localhost}}
    targets: [{{address: 127.0.0.1:{https_port}}}]
    health_check: {{path: /healthz, interval: 200ms, timeout: 1s, unhealthy_after: 2}}
  - name: grpc_unchecked
    protocol: h2c
    targets: [{{address: 127.0.0.1:{plain_port}}}]
  - name: grpc_untrusted
    protocol: h2
    targets: [{{address: 127.0.0.1:{tls_port}}}]
    retries: {{attempts: 0}}
routes:
  - name: grpc
    match: {{path_prefix: /test.Echo/}}
    upstream: grpc
  - name: grpc_tls
    match: {{path_prefix: /test.Echo/, headers: {{x-which: tls}}}}
    upstream: grpc_tls
  - name: unchecked
    match: {{path_prefix: /test.Echo/, headers: {{x-which: unchecked}}}}
    upstream: grpc_unchecked
  - name: untrusted
    match: {{path_prefix: /test.Echo/, headers: {{x-which: untrusted}}}}
    upstream: grpc_untrusted
  - name: limited
    match: {{path: /test.Echo/Limited}}
    upstream: grpc
    rate_limit: {{limit: 3, window: 1m, key: route}}
  - name: https
    match: {{path_prefix: /https/}}
    upstream: https_origin
  - name: secure
    match: {{path_prefix: /test.Secure/}}
    upstream: grpc
    auth: {{methods: [api_key]}}
"""


def metrics_text(admin_port):
    req = urllib.request.Request(f"http://127.0.0.1:{admin_port}/metrics",
                                 headers={"Authorization": "Bearer " + TOKEN})
    return urllib.request.urlopen(req, timeout=5).read().decode()


class Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = f"https origin {self.path} via={self.headers.get('via')}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def start_https_origin(tmp):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(f"{tmp}/server.pem", f"{tmp}/server.key")
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]




def main():
    binary = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        make_ca_and_server_cert(tmp, "localhost")
        with open(f"{tmp}/admin.token", "w") as f:
            f.write(TOKEN + "\n")
        os.chmod(f"{tmp}/admin.token", 0o600)
        plain_port, tls_port = free_port(), free_port()
        plain = start_server(plain_port)
        creds = grpc.ssl_server_credentials(
            [(open(f"{tmp}/server.key", "rb").read(), open(f"{tmp}/server.pem", "rb").read())])
        secure = start_server(tls_port, creds)
        https_port = start_https_origin(tmp)
        proxy_port, admin_port = free_port(), free_port()
        with open(f"{tmp}/node.yaml", "w") as f:
            f.write(config(tmp, plain_port, tls_port, https_port, proxy_port, admin_port))
        log = open(f"{tmp}/node.log", "w")
        node = subprocess.Popen([binary, "run", "--config", f"{tmp}/node.yaml"], stderr=log)
        try:
            wait_http(f"http://127.0.0.1:{admin_port}/health", 30, lambda: node.poll() is None)
            check(node.poll() is None, "meridian runs")
            try:
                tests(proxy_port, admin_port, tmp)
            except Exception as e:  # a failed call that was not expected to fail
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
            plain.stop(0)
            secure.stop(0)
            if FAILURES:
                print(open(f"{tmp}/node.log").read()[-6000:])
    finish()


def status_of(call):
    try:
        call()
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details()


def tests(port, admin_port, tmp):
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS)
    unary_call = channel.unary_unary("/test.Echo/Unary")
    # Unary, with metadata both ways.
    reply, call = unary_call.with_call(b"hello", metadata=(("x-meta", "m1"),), timeout=10)
    initial = dict(call.initial_metadata())
    trailing = dict(call.trailing_metadata())
    check(reply == b"hello", f"unary echo ({reply!r})")
    check(initial.get("x-echo") == "m1", f"request metadata reaches the server ({initial})")
    check(trailing.get("x-trailer") == "t-m1", f"trailing metadata comes back ({trailing})")
    check(call.code() == grpc.StatusCode.OK, "status OK")

    # Status codes and messages from the server pass through.
    for code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT,
                 grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAVAILABLE):
        got, details = status_of(lambda: unary_call(b"status:%d" % code.value[0], timeout=10))
        check(got == code and details == f"asked for status {code.value[0]}",
              f"{code.name} with its message passes through ({got}, {details!r})")

    # 4 MiB each way.
    big = os.urandom(BIG)
    check(unary_call(big, timeout=30) == big, "a 4 MiB message there and back")

    # Streaming: client, server, bidirectional.
    cs = channel.stream_unary("/test.Echo/ClientStream")
    parts = [b"p%03d" % i for i in range(50)]
    check(cs(iter(parts), timeout=10) == b"50:" + b"".join(parts), "client streaming (50 messages)")
    ss = channel.unary_stream("/test.Echo/ServerStream")
    got = list(ss(b"200:1000", timeout=20))
    check(len(got) == 200 and all(struct.unpack(">I", m[:4])[0] == i for i, m in enumerate(got)),
          f"server streaming (200 messages in order, {len(got)})")
    got = list(ss(b"3:%d" % (BIG - 4), timeout=30))
    check(len(got) == 3 and all(len(m) == BIG for m in got), "server streaming 4 MiB messages")
    bd = channel.stream_stream("/test.Echo/Bidi")
    msgs = [b"m%d" % i for i in range(100)]
    got = list(bd(iter(msgs), timeout=20))
    check(got == [b"echo:" + m for m in msgs], f"bidirectional streaming (100, {len(got)})")

    # Deadlines: grpc-timeout shorter than the method; the upstream call ends with it.
    slow_call = channel.unary_unary("/test.Echo/Slow")
    start = time.monotonic()
    got, _ = status_of(lambda: slow_call(b"x", timeout=0.5))
    took = time.monotonic() - start
    check(got == grpc.StatusCode.DEADLINE_EXCEEDED and took < 2.5,
          f"a 0.5 s deadline: DEADLINE_EXCEEDED in {took:.2f} s")
    check(SLOW_ENDED.wait(5), "the upstream sees its call cancelled")

    # 200 concurrent calls on one connection (the client multiplexes on its channel).
    pause_call = channel.unary_unary("/test.Echo/Pause")
    start = time.monotonic()
    # (On an upstream without health checks: the Python server, busy with 200 calls, answers the
    # gRPC health check UNAVAILABLE.)
    calls = [pause_call.future(b"c%d" % i, metadata=(("x-which", "unchecked"),), timeout=30)
             for i in range(200)]
    results = [c.result() for c in calls]
    took = time.monotonic() - start
    check(results == [b"c%d" % i for i in range(200)],
          f"200 concurrent calls on one connection all answered ({took:.2f} s)")

    # The upstream over TLS (h2 by ALPN, verified against the CA file).
    reply, call = unary_call.with_call(b"over tls", metadata=(("x-which", "tls"), ("x-meta", "m2")),
                                       timeout=10)
    check(reply == b"over tls" and dict(call.initial_metadata()).get("x-echo") == "m2",
          "an h2 upstream over TLS")
    got, details = status_of(lambda: unary_call(b"x", metadata=(("x-which", "untrusted"),),
                                                timeout=10))
    check(got == grpc.StatusCode.UNAVAILABLE,
          f"an upstream whose certificate does not verify is not called ({got}, {details!r})")

    # The gateway's own errors: trailers-only responses with a grpc-status.
    got, details = status_of(lambda: channel.unary_unary("/test.Nowhere/X")(b"x", timeout=10))
    check(got == grpc.StatusCode.UNIMPLEMENTED, f"no route: UNIMPLEMENTED ({got}, {details!r})")
    limited = channel.unary_unary("/test.Echo/Limited")
    codes = [status_of(lambda: limited(b"x", timeout=10))[0] for _ in range(5)]
    check(codes[:3] == [grpc.StatusCode.OK] * 3 and
          codes[3:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2,
          f"a per-method limit of 3: RESOURCE_EXHAUSTED after ({[c.name for c in codes]})")
    got, _ = status_of(lambda: channel.unary_unary("/test.Secure/X")(b"x", timeout=10))
    check(got == grpc.StatusCode.UNAUTHENTICATED, f"no API key: UNAUTHENTICATED ({got})")

    grpc_web(port)

    # HTTP/1.1 to a target over TLS (verified against the CA file), health-checked over TLS.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/https/page")
    r = conn.getresponse()
    body = r.read().decode()
    check(r.status == 200 and body.startswith("https origin /https/page via=1.1 meridian"),
          f"HTTPS to an HTTP/1.1 target ({r.status} {body!r})")

    # Health checks over the upstream's protocol: the gRPC health protocol on h2c. NOT_SERVING
    # takes the target out (calls fail UNAVAILABLE), SERVING brings it back.
    SERVING["value"] = False
    deadline = time.monotonic() + 10
    got = None
    while time.monotonic() < deadline:
        got, _ = status_of(lambda: unary_call(b"x", timeout=5))
        if got == grpc.StatusCode.UNAVAILABLE:
            break
        time.sleep(0.1)
    check(got == grpc.StatusCode.UNAVAILABLE, f"a NOT_SERVING target is taken out ({got})")
    SERVING["value"] = True
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        got, _ = status_of(lambda: unary_call(b"x", timeout=5))
        if got == grpc.StatusCode.OK:
            break
        time.sleep(0.1)
    check(got == grpc.StatusCode.OK, f"SERVING again brings it back ({got})")
    # The h2 (TLS) and HTTPS targets' checks passed all along: they are still called.
    reply = unary_call(b"tls again", metadata=(("x-which", "tls"),), timeout=10)
    check(reply == b"tls again", "the h2 TLS target passes its health check")

    # grpc-status in the metrics and the access log.
    text = metrics_text(admin_port)
    check('meridian_grpc_responses_total{route="grpc",grpc_status="0"}' in text and
          'meridian_grpc_responses_total{route="grpc",grpc_status="5"}' in text and
          'meridian_grpc_responses_total{route="limited",grpc_status="8"}' in text,
          "grpc-status counted per route")
    ok = False
    deadline = time.monotonic() + 5
    while not ok and time.monotonic() < deadline:
        lines = []
        with open(f"{tmp}/access.log") as f:
            for line in f:
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    pass  # the last line, still being written
        ok = any(l.get("grpc_status") == 5 and l.get("route") == "grpc" for l in lines)
        if not ok:
            time.sleep(0.1)
    check(ok, "grpc_status in the access log")
    channel.close()


def web_frames(body):
    out, i = [], 0
    while i + 5 <= len(body):
        flag, n = body[i], struct.unpack(">I", body[i + 1:i + 5])[0]
        out.append((flag, body[i + 5:i + 5 + n]))
        i += 5 + n
    return out, i == len(body)


def grpc_web(port):
    def post(path, body, content_type):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", path, body=body, headers={"content-type": content_type,
                                                       "x-grpc-web": "1"})
        r = conn.getresponse()
        data = r.read()
        conn.close()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), data

    message = b"from a browser"
    framed = b"\x00" + struct.pack(">I", len(message)) + message
    status, headers, body = post("/test.Echo/Unary", framed, "application/grpc-web+proto")
    frames, whole = web_frames(body)
    check(status == 200 and headers.get("content-type") == "application/grpc-web+proto",
          f"gRPC-Web: 200 application/grpc-web+proto ({status}, {headers.get('content-type')})")
    check(whole and len(frames) == 2 and frames[0] == (0, message) and frames[1][0] == 0x80 and
          b"grpc-status:0" in frames[1][1] and b"x-trailer:t--" in frames[1][1],
          f"gRPC-Web: the message, then the trailers as a frame ({frames})")

    text_body = base64.b64encode(framed)
    status, headers, body = post("/test.Echo/Unary", text_body, "application/grpc-web-text+proto")
    frames, whole = web_frames(base64.b64decode(body))
    check(status == 200 and headers.get("content-type") == "application/grpc-web-text+proto" and
          whole and frames and frames[0] == (0, message) and frames[-1][0] == 0x80,
          f"gRPC-Web text: base64 both ways ({status}, {headers.get('content-type')}, {frames})")

    # Two text calls on one keep-alive connection: each ends with its own trailer frame.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    bodies = []
    for word in (b"first call", b"second"):
        f = base64.b64encode(b"\x00" + struct.pack(">I", len(word)) + word)
        conn.request("POST", "/test.Echo/Unary", body=f,
                     headers={"content-type": "application/grpc-web-text"})
        r = conn.getresponse()
        bodies.append(web_frames(base64.b64decode(r.read()))[0])
    conn.close()
    check([b[0] for b in bodies] == [(0, b"first call"), (0, b"second")] and
          all(b[-1][0] == 0x80 and b"grpc-status:0" in b[-1][1] for b in bodies),
          f"two gRPC-Web text calls on one connection, each whole ({bodies})")
    status, headers, body = post("/test.Echo/Unary", b"not*base64", "application/grpc-web-text")
    check(status == 200 and headers.get("grpc-status") == "13",
          f"a text body that is not base64 is the client's error ({status} {headers})")

    err = b"status:5"
    framed = b"\x00" + struct.pack(">I", len(err)) + err
    status, headers, body = post("/test.Echo/Unary", framed, "application/grpc-web+proto")
    frames, _ = web_frames(body)
    trailer_text = b"".join(f[1] for f in frames if f[0] == 0x80)
    check(status == 200 and (headers.get("grpc-status") == "5" or b"grpc-status:5" in trailer_text),
          f"gRPC-Web: an error status reaches the browser ({headers}, {frames})")
    status, headers, _ = post("/test.Nowhere/X", framed, "application/grpc-web+proto")
    check(status == 200 and headers.get("grpc-status") == "12",
          f"gRPC-Web: the gateway's own error as a grpc-status ({status}, {headers})")


if __name__ == "__main__":
    main()
