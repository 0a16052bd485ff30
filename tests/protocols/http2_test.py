#!/usr/bin/python3
"""HTTP/2 to clients through meridian, with real clients (curl, nghttp, h2load) and raw frames.

Starts an HTTP/1.1 origin (asyncio, keep-alive) and `meridian run` as a child with a plain and a
TLS listener, then checks: h2c with prior knowledge and h2 by ALPN (http/1.1 still chosen by a
client that offers only it); request and response bodies byte-exact both ways, with and without
content-length, larger than every flow-control window; cookie crumbs joined; local answers (404,
431) as HTTP/2 responses; 200 concurrent streams on one connection (h2load); the h2c preface
split at every byte; and each defence -- rapid reset, a CONTINUATION flood, PING and SETTINGS
floods -- cutting its connection off with GOAWAY ENHANCE_YOUR_CALM, counted, while another
client keeps being served; a graceful GOAWAY on SIGTERM. usage: http2_test.py MERIDIAN_BINARY
"""

import asyncio
import hashlib
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import websockets

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
from harness import free_port  # noqa: E402

TOKEN = "test-token-0123456789abcdef"
FAILURES = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        FAILURES.append(what)




# --- the origin: HTTP/1.1 keep-alive, answers GET /size/N with N bytes, echoes POST bodies ------

def pattern(n):
    block = bytes(range(256)) * 64
    return (block * (n // len(block) + 1))[:n]


async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            fields = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    fields.setdefault(k.strip().lower(), []).append(v.strip())
            body = b""
            if "content-length" in fields:
                body = await reader.readexactly(int(fields["content-length"][0]))
            elif fields.get("transfer-encoding", [""])[0].lower() == "chunked":
                while True:
                    size = int((await reader.readline()).strip(), 16)
                    if size == 0:
                        await reader.readline()
                        break
                    body += await reader.readexactly(size)
                    await reader.readline()
            if target.startswith("/size/"):
                out = pattern(int(target[6:]))
            elif method == "POST":
                te = fields.get("transfer-encoding", ["-"])[0]
                out = f"{len(body)} {hashlib.sha256(body).hexdigest()} {te}".encode()
            else:
                info = [f"via={fields.get('via', ['-'])[0]}",
                        f"cookie={';'.join(fields.get('cookie', []))}",
                        f"cookies={len(fields.get('cookie', []))}",
                        f"host={fields.get('host', ['-'])[0]}"]
                out = " ".join(info).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Origin: yes\r\n\r\n"
                         % len(out) + out)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def echo(ws):
    try:
        async for message in ws:
            await ws.send(message)
    except websockets.ConnectionClosed:
        pass


def run_origin(port, ws_port, ready):
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", port, backlog=512))
    loop.run_until_complete(websockets.serve(echo, "127.0.0.1", ws_port, compression=None))
    ready.set()
    loop.run_until_complete(server.serve_forever())


# --- raw HTTP/2 frames -------------------------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH, PING, GOAWAY, WINDOW, CONTINUATION = range(10)


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", stream) + payload


def hpack(fields):
    """Literal fields without indexing, no Huffman (RFC 7541 section 6.2.2); short strings."""
    out = b""
    for k, v in fields:
        out += b"\x00" + bytes([len(k)]) + k.encode() + bytes([len(v)]) + v.encode()
    return out


def request_block(path="/", authority="gw"):
    return hpack([(":method", "GET"), (":scheme", "http"), (":authority", authority),
                  (":path", path)])


def read_frames(sock, until, limit=10.0):
    """Reads frames until until(type, flags, stream, payload) is true or the connection ends.
    Returns (matched frame or None, closed: bool)."""
    sock.settimeout(limit)
    buf = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        while len(buf) >= 9:
            length = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + length:
                break
            f = (buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7fffffff, buf[9:9 + length])
            buf = buf[9 + length:]
            if until(*f):
                return f, False
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return None, True
        except socket.timeout:
            break
        if not chunk:
            return None, True
        buf += chunk
    return None, False


def connect_h2c(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(PREFACE + frame(SETTINGS, 0, 0))
    return s


def goaway_code(f):
    return int.from_bytes(f[3][4:8], "big") if f else None


def send_all_ignoring_reset(sock, data):
    try:
        sock.sendall(data)
    except (ConnectionResetError, BrokenPipeError):
        pass


# --- the node ----------------------------------------------------------------------------------

def config(tmp, origin_port, ws_port, proxy_port, tls_port, admin_port):
    return f"""node: {{id: h2-1, region: eu-west, data_dir: {tmp}/data}}
listen: {{proxy: 127.0.0.1:{proxy_port}, admin: 127.0.0.1:{admin_port}}}
admin: {{token_file: {tmp}/admin.token}}
limits: {{max_header_bytes: 8KiB, idle_timeout: 3s}}
tls:
  listen: 127.0.0.1:{tls_port}
  certificates: [{{cert: {tmp}/cert.pem, key: {tmp}/key.pem}}]
http2: {{reset_burst: 100, resets_per_second: 10, control_frame_burst: 200,
        control_frames_per_second: 20, max_continuations: 4, initial_stream_window: 64KiB,
        connection_window: 128KiB}}
upstreams:
  - name: origin
    targets: [{{address: 127.0.0.1:{origin_port}}}]
  - name: sockets
    targets: [{{address: 127.0.0.1:{ws_port}}}]
routes:
  - name: ws
    match: {{path_prefix: /ws}}
    upstream: sockets
    websocket: true
  - name: api
    match: {{path_prefix: /api}}
    strip_prefix: /api
    upstream: origin
"""


def metric(admin_port, name):
    req = urllib.request.Request(f"http://127.0.0.1:{admin_port}/metrics",
                                 headers={"Authorization": "Bearer " + TOKEN})
    for line in urllib.request.urlopen(req, timeout=5).read().decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def curl(*args, data=None):
    r = subprocess.run(["curl", "-s", "-S", "--max-time", "20", *args], capture_output=True,
                       input=data)
    return r.returncode, r.stdout, r.stderr.decode()


def curl_status(*args):
    rc, out, _ = curl("-o", "/dev/null", "-w", "%{http_version} %{http_code}", *args)
    return out.decode()


def served(port):
    """Another client, on its own connection, is served meanwhile."""
    return curl_status("--http2-prior-knowledge", f"http://127.0.0.1:{port}/api/x") == "2 200"


def main():
    binary = sys.argv[1]
    origin_port, ws_port = free_port(), free_port()
    ready = threading.Event()
    threading.Thread(target=run_origin, args=(origin_port, ws_port, ready), daemon=True).start()
    ready.wait(10)
    with tempfile.TemporaryDirectory() as tmp:
        with open(f"{tmp}/admin.token", "w") as f:
            f.write(TOKEN + "\n")
        os.chmod(f"{tmp}/admin.token", 0o600)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                        "-keyout", f"{tmp}/key.pem", "-out", f"{tmp}/cert.pem"],
                       check=True, capture_output=True)
        proxy_port, tls_port, admin_port = free_port(), free_port(), free_port()
        with open(f"{tmp}/node.yaml", "w") as f:
            f.write(config(tmp, origin_port, ws_port, proxy_port, tls_port, admin_port))
        log = open(f"{tmp}/node.log", "w")
        node = subprocess.Popen([binary, "run", "--config", f"{tmp}/node.yaml"], stderr=log)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and node.poll() is None:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/health", timeout=1)
                    break
                except OSError:
                    time.sleep(0.05)
            check(node.poll() is None, "meridian runs")
            tests(proxy_port, tls_port, admin_port, tmp, node)
        finally:
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
            try:
                node.wait(30)
            except subprocess.TimeoutExpired:
                node.kill()
            log.close()
            if FAILURES or node.returncode not in (0, None):
                print(open(f"{tmp}/node.log").read()[-6000:])
    print(f"{len(FAILURES)} failure(s)")
    sys.exit(1 if FAILURES else 0)


def tests(port, tls_port, admin_port, tmp, node):
    base = f"http://127.0.0.1:{port}"
    # h2c with prior knowledge; the origin sees HTTP/1.1 with Via "2 meridian", one Cookie.
    rc, out, err = curl("--http2-prior-knowledge", "-i", "-H", "cookie: a=1", "-H", "cookie: b=2",
                        f"{base}/api/hello")
    text = out.decode("latin-1")
    check(rc == 0 and text.startswith("HTTP/2 200"), f"h2c prior knowledge: {text[:40]!r} {err}")
    check("via=2 meridian" in text, "the origin sees Via: 2 meridian")
    check("cookie=a=1; b=2 cookies=1" in text, f"cookie crumbs joined into one field: {text[-80:]!r}")
    check("x-origin: yes" in text and "x-request-id: " in text, "origin and gateway fields")
    check(curl_status(f"{base}/api/hello") == "1.1 200", "HTTP/1.1 still served on the port")

    # h2 by ALPN on the TLS listener; a client offering only http/1.1 gets it.
    tls = f"https://localhost:{tls_port}"
    resolve = f"localhost:{tls_port}:127.0.0.1"
    check(curl_status("--http2", "--cacert", f"{tmp}/cert.pem", "--resolve", resolve,
                      f"{tls}/api/x") == "2 200", "h2 negotiated by ALPN over TLS")
    check(curl_status("--http1.1", "--cacert", f"{tmp}/cert.pem", "--resolve", resolve,
                      f"{tls}/api/x") == "1.1 200", "http/1.1 by ALPN over TLS")

    # Bodies larger than every window, both ways, byte-exact.
    rc, out, _ = curl("--http2-prior-knowledge", f"{base}/api/size/5000000")
    check(rc == 0 and out == pattern(5000000), f"a 5 MB response arrives whole ({len(out)})")
    upload = os.urandom(3_000_000)
    digest = hashlib.sha256(upload).hexdigest()
    rc, out, _ = curl("--http2-prior-knowledge", "--data-binary", "@-", f"{base}/api/up",
                      data=upload)
    check(out.decode() == f"3000000 {digest} -", f"a 3 MB upload with content-length: {out[:90]!r}")
    rc, out, _ = curl("--http2-prior-knowledge", "--data-binary", "@-", "-H", "Content-Length:",
                      f"{base}/api/up", data=upload)
    check(out.decode() == f"3000000 {digest} chunked",
          f"a 3 MB upload without content-length goes upstream chunked: {out[:90]!r}")
    rc, out, _ = curl("--http2-prior-knowledge", "-X", "POST", f"{base}/api/up")
    check(out.decode().startswith("0 "), f"a bodiless POST: {out[:40]!r}")

    # The gateway's own answers are HTTP/2 responses.
    rc, out, _ = curl("--http2-prior-knowledge", "-i", f"{base}/nowhere")
    text = out.decode()
    check(text.startswith("HTTP/2 404") and "content-type: application/json" in text and
          '"error":"not_found"' in text.replace(" ", ""), f"404 as HTTP/2: {text[:200]!r}")
    rc, out, _ = curl("--http2-prior-knowledge", "-i", "-H", "x-big: " + "a" * 9000,
                      f"{base}/api/x")
    check(out.decode().startswith("HTTP/2 431"), f"a header list over the limit: 431 ({out[:30]!r})")
    check(served(port), "the connection after a 431 is served")

    # nghttp: a real client's view of the stream; 200 concurrent streams on one connection.
    r = subprocess.run(["nghttp", "-nv", f"{base}/api/x"], capture_output=True, text=True,
                       timeout=30)
    check(":status: 200" in r.stdout, "nghttp sees 200")
    r = subprocess.run(["h2load", "-n", "2000", "-c", "1", "-m", "200", f"{base}/api/x"],
                       capture_output=True, text=True, timeout=120)
    check("2000 succeeded" in r.stdout and "2000 2xx" in r.stdout,
          "h2load: 2000 requests, 200 concurrent streams on one connection, all 2xx: " +
          " ".join(l for l in r.stdout.splitlines() if "requests:" in l or "status" in l))

    # The h2c preface, SETTINGS and a request, one byte at a time.
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for b in PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, 0x5, 1, request_block("/api/x")):
        s.send(bytes([b]))
        time.sleep(0.0005)
    f, _ = read_frames(s, lambda t, fl, st, p: t == HEADERS and st == 1)
    check(f is not None and f[3][:1] == b"\x88", "the preface split at every byte: 200 on stream 1")
    s.close()

    # WebSocket over HTTP/2 (RFC 8441): the server allows extended CONNECT; a masked text frame
    # and a close go through to the origin's echo and back.
    s = connect_h2c(port)
    f, _ = read_frames(s, lambda t, fl, st, p: t == SETTINGS and not fl & 1)
    settings = {int.from_bytes(f[3][i:i + 2], "big"): int.from_bytes(f[3][i + 2:i + 6], "big")
                for i in range(0, len(f[3]), 6)} if f else {}
    check(settings.get(8) == 1, f"SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 ({settings})")
    s.sendall(frame(SETTINGS, 1, 0) + frame(HEADERS, 0x4, 1, hpack([
        (":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
        (":path", "/ws/echo"), (":authority", "gw"), ("sec-websocket-version", "13")])))
    f, _ = read_frames(s, lambda t, fl, st, p: t in (HEADERS, RST_STREAM) and st == 1)
    check(f is not None and f[0] == HEADERS and f[3][:1] == b"\x88",
          f"extended CONNECT answered 200 ({f and f[3][:8]!r})")

    def ws_frame(opcode, payload):
        mask = b"\x01\x02\x03\x04"
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked

    s.sendall(frame(DATA, 0, 1, ws_frame(1, b"hello over h2")))
    got = b""
    def echoed(t, fl, st, p):
        nonlocal got
        if t == DATA and st == 1:
            got += p
        return got.startswith(b"\x81") and len(got) >= 2 + got[1]
    read_frames(s, echoed)
    check(got[:15] == b"\x81\x0dhello over h2", f"a text message echoed through the tunnel: {got!r}")
    got = b""
    s.sendall(frame(DATA, 0, 1, ws_frame(8, b"\x03\xe8bye")))
    f, _ = read_frames(s, lambda t, fl, st, p: (echoed(t, fl, st, p) and False) or
                       (st == 1 and fl & 1 == 1) or t == RST_STREAM)
    check(got[:2] == b"\x88\x05" and got[2:4] == b"\x03\xe8",
          f"the close frame comes back ({got!r})")
    check(f is not None and f[0] in (DATA, HEADERS) and f[1] & 1,
          "the origin's close ends the stream (END_STREAM)")
    check(metric(admin_port, "meridian_websocket_upgrades_total") == 1, "the tunnel is counted")
    # A route without websocket: true refuses the extended CONNECT (not a 200 tunnel).
    s.sendall(frame(HEADERS, 0x4, 3, hpack([
        (":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
        (":path", "/api/x"), (":authority", "gw"), ("sec-websocket-version", "13")])))
    f, _ = read_frames(s, lambda t, fl, st, p: t in (HEADERS, RST_STREAM) and st == 3)
    check(f is not None and f[0] == HEADERS and f[3][:1] != b"\x88",
          "extended CONNECT to a route without websocket: true is refused")
    s.close()

    # Rapid reset: open a stream and reset it at once, again and again.
    s = connect_h2c(port)
    burst = b""
    for i in range(300):
        sid = 1 + 2 * i
        burst += frame(HEADERS, 0x5, sid, request_block("/api/x")) + \
            frame(RST_STREAM, 0, sid, struct.pack(">I", 8))
    send_all_ignoring_reset(s, burst)
    f, closed = read_frames(s, lambda t, fl, st, p: t == GOAWAY)
    check(goaway_code(f) == 0xb, f"rapid reset: GOAWAY ENHANCE_YOUR_CALM ({goaway_code(f)})")
    check(served(port), "rapid reset: another client is served")
    check(metric(admin_port, "meridian_http2_rapid_resets_total") == 1, "rapid reset counted")
    s.close()

    # The same without a single RST_STREAM from the client (MadeYouReset): each stream is made
    # invalid (more DATA than its content-length) so that nghttp2 resets it.
    s = connect_h2c(port)
    burst = b""
    for i in range(300):
        sid = 1 + 2 * i
        burst += frame(HEADERS, 0x4, sid, hpack([
            (":method", "POST"), (":scheme", "http"), (":authority", "gw"), (":path", "/api/p"),
            ("content-length", "1")])) + frame(DATA, 0x1, sid, b"xy")
    send_all_ignoring_reset(s, burst)
    f, closed = read_frames(s, lambda t, fl, st, p: t == GOAWAY)
    check(goaway_code(f) == 0xb, f"resets nghttp2 makes count too: GOAWAY ({goaway_code(f)})")
    check(metric(admin_port, "meridian_http2_rapid_resets_total") == 2, "... and are counted")
    s.close()

    # A client whose window stays at zero does not hold its response forever: reset (CANCEL)
    # after the idle timeout (3 s here), the connection goes on.
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(PREFACE + frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 0)) +
              frame(HEADERS, 0x5, 1, request_block("/api/size/60000")))
    f, _ = read_frames(s, lambda t, fl, st, p: t == RST_STREAM and st == 1, limit=15)
    check(f is not None and int.from_bytes(f[3], "big") == 8,
          f"a response held at a zero window is reset with CANCEL ({f and f[3]!r})")
    s.sendall(frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 65535)) +
              frame(HEADERS, 0x5, 3, request_block("/api/x")))
    f, _ = read_frames(s, lambda t, fl, st, p: t == HEADERS and st == 3)
    check(f is not None, "the connection serves its next stream")
    s.close()

    # CONTINUATION flood: a header block that goes on and on.
    s = connect_h2c(port)
    flood = frame(HEADERS, 0x1, 1, request_block("/api/x"))
    for i in range(50):
        flood += frame(CONTINUATION, 0, 1, hpack([(f"x-c{i}", "v" * 50)]))
    send_all_ignoring_reset(s, flood)
    f, closed = read_frames(s, lambda t, fl, st, p: t == GOAWAY)
    check(goaway_code(f) == 0xb, f"CONTINUATION flood: GOAWAY ENHANCE_YOUR_CALM ({goaway_code(f)})")
    check(served(port), "CONTINUATION flood: another client is served")
    check(metric(admin_port, "meridian_http2_continuation_floods_total") == 1,
          "CONTINUATION flood counted")
    s.close()

    # PING and SETTINGS floods.
    for name, flood_frame in (("PING", frame(PING, 0, 0, b"12345678")),
                              ("SETTINGS", frame(SETTINGS, 0, 0))):
        s = connect_h2c(port)
        send_all_ignoring_reset(s, flood_frame * 1000)
        f, closed = read_frames(s, lambda t, fl, st, p: t == GOAWAY)
        check(goaway_code(f) == 0xb, f"{name} flood: GOAWAY ENHANCE_YOUR_CALM ({goaway_code(f)})")
        check(served(port), f"{name} flood: another client is served")
        s.close()
    check(metric(admin_port, "meridian_http2_control_floods_total") == 2, "control floods counted")

    # A few PINGs and SETTINGS, as real clients send, are fine.
    s = connect_h2c(port)
    s.sendall(frame(PING, 0, 0, b"abcdefgh") * 5 + frame(HEADERS, 0x5, 1, request_block("/api/x")))
    f, _ = read_frames(s, lambda t, fl, st, p: t == HEADERS and st == 1)
    check(f is not None, "a handful of PINGs does not cut a connection off")

    # Drain: SIGTERM sends a shutdown notice; a stream opened after it is still served; then a
    # GOAWAY naming that stream, and the connection closes.
    check(metric(admin_port, "meridian_http2_streams_open") == 0, "no stream left open")
    node.send_signal(signal.SIGTERM)
    f, closed = read_frames(s, lambda t, fl, st, p: t == GOAWAY, limit=20)
    last = int.from_bytes(f[3][:4], "big") & 0x7fffffff if f else None
    check(f is not None and goaway_code(f) == 0 and last == 0x7fffffff,
          f"SIGTERM: a shutdown notice (GOAWAY NO_ERROR, last stream 2^31-1: {last})")
    s.sendall(frame(HEADERS, 0x5, 3, request_block("/api/x")))
    f, closed = read_frames(s, lambda t, fl, st, p: t == HEADERS and st == 3)
    check(f is not None, "a stream opened after the notice is served")
    f, closed = read_frames(s, lambda t, fl, st, p: t == GOAWAY, limit=10)
    last = int.from_bytes(f[3][:4], "big") & 0x7fffffff if f else None
    check(last == 3, f"then a GOAWAY naming the last stream taken ({last})")
    started = time.monotonic()
    f, closed = read_frames(s, lambda t, fl, st, p: False, limit=10)
    check(closed and time.monotonic() - started < 5, "and the connection closes")
    s.close()
    node.wait(30)
    check(node.returncode == 0, f"meridian exits 0 ({node.returncode})")


if __name__ == "__main__":
    main()
