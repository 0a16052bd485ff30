#!/usr/bin/python3
"""WebSocket through meridian, with a real client and server (python3-websockets).

Starts a websockets server and `meridian run` as a child, then checks that what a client sees
through the gateway is what it sees talking to the server directly: text, binary, fragmented
and 1 MiB messages, ping/pong, closes from either side with their codes, on the plain and the
TLS listener; that a route without
`websocket: true` does not upgrade; that max_websocket_tunnels refuses the next upgrade with
503 and admits again once a tunnel closed; that an open tunnel survives a reload (SIGHUP),
that the tunnel metrics count, and that a drain closes an open tunnel with 1001. usage: websocket_test.py MERIDIAN_BINARY
"""

import asyncio
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

import websockets

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
from harness import free_port  # noqa: E402

TOKEN = "test-token-0123456789abcdef"
TLS_SECTION = ""  # the TLS listener, set once the certificate exists




async def origin(ws):
    """Echoes every message; /bye closes with 4002 after the first one."""
    try:
        async for message in ws:
            await ws.send(message)
            if ws.path == "/bye":
                await ws.close(4002, "bye")
                return
    except websockets.ConnectionClosed:
        pass  # a client's close with a code of its own (4001)


def config(tmp, upstream_port, proxy_port, admin_port, extra_route="", limits=""):
    return f"""node: {{id: ws-1, region: eu-west, data_dir: {tmp}/data}}
listen: {{proxy: 127.0.0.1:{proxy_port}, admin: 127.0.0.1:{admin_port}}}
admin: {{token_file: {tmp}/admin.token}}
limits: {{max_websocket_tunnels: 3{limits}}}
upstreams:
  - name: ws
    targets: [{{address: 127.0.0.1:{upstream_port}}}]
routes:
  - name: sockets
    match: {{path_prefix: /}}
    upstream: ws
    websocket: true
  - name: plain
    match: {{path_prefix: /plain}}
    upstream: ws
{extra_route}{TLS_SECTION}"""


def metric(admin_port, name):
    req = urllib.request.Request(f"http://127.0.0.1:{admin_port}/metrics",
                                 headers={"Authorization": "Bearer " + TOKEN})
    for line in urllib.request.urlopen(req, timeout=5).read().decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    return None


async def eventually(check, limit=10.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.05)
    return await check()


async def conversation(url, tls=None):
    """What a client observes in one exchange of every kind; compared direct vs gateway."""
    seen = []
    async with websockets.connect(url, max_size=None, compression=None, ssl=tls) as ws:
        await ws.send("hello")
        seen.append(await ws.recv())
        await ws.send(b"\x00\x01\xfe\xff" * 3)
        seen.append(await ws.recv())
        await ws.send(["frag", "ment", "ed"])  # one message in three frames
        seen.append(await ws.recv())
        big = os.urandom(1 << 20)
        await ws.send(big)
        seen.append((await ws.recv()) == big)
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, 5)
        seen.append("pong")
        await ws.close(4001, "done here")
        seen.append((ws.close_code, ws.close_reason))
    async with websockets.connect(url.rstrip("/") + "/bye", ssl=tls) as ws:
        await ws.send("last")
        seen.append(await ws.recv())
        try:
            await ws.recv()
        except websockets.ConnectionClosed as closed:
            seen.append((closed.rcvd.code, closed.rcvd.reason))
    return seen


async def main(binary):
    failures = []

    def check(cond, what):
        print(("ok   " if cond else "FAIL ") + what, flush=True)
        if not cond:
            failures.append(what)

    upstream_port = free_port()
    server = await websockets.serve(origin, "127.0.0.1", upstream_port, max_size=None,
                                    compression=None)
    with tempfile.TemporaryDirectory() as tmp:
        with open(f"{tmp}/admin.token", "w") as f:
            f.write(TOKEN + "\n")
        os.chmod(f"{tmp}/admin.token", 0o600)
        proxy_port, admin_port, tls_port = free_port(), free_port(), free_port()
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                        "-keyout", f"{tmp}/key.pem", "-out", f"{tmp}/cert.pem"],
                       check=True, capture_output=True)
        global TLS_SECTION
        TLS_SECTION = (f"tls:\n  listen: 127.0.0.1:{tls_port}\n"
                       f"  certificates: [{{cert: {tmp}/cert.pem, key: {tmp}/key.pem}}]\n")
        with open(f"{tmp}/node.yaml", "w") as f:
            f.write(config(tmp, upstream_port, proxy_port, admin_port))
        log = open(f"{tmp}/node.log", "w")
        node = subprocess.Popen([binary, "run", "--config", f"{tmp}/node.yaml"], stderr=log)
        try:
            async def up():
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/health", timeout=1)
                    return True
                except OSError:
                    return node.poll() is not None
            await eventually(up, 30)
            check(node.poll() is None, "meridian runs")
            gateway = f"ws://127.0.0.1:{proxy_port}/"
            direct = f"ws://127.0.0.1:{upstream_port}/"
            through, alone = await conversation(gateway), await conversation(direct)
            check(through == alone, f"the same conversation through the gateway as direct: "
                                    f"{through} vs {alone}")
            # The same over the TLS listener (wss://, the client verifying the certificate).
            tls = ssl.create_default_context(cafile=f"{tmp}/cert.pem")
            secure = await conversation(f"wss://localhost:{tls_port}/", tls)
            check(secure == alone, f"the same conversation over TLS: {secure} vs {alone}")

            try:
                async with websockets.connect(f"ws://127.0.0.1:{proxy_port}/plain"):
                    check(False, "a route without websocket: true does not upgrade")
            except websockets.InvalidStatusCode as e:
                check(e.status_code != 101,
                      f"a route without websocket: true does not upgrade ({e.status_code})")

            # An upgrade the origin refuses (a malformed key: 400) ends the connection after the
            # answer: what the client sent behind it is never read as a next request.
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Key: bad\r\n"
                         b"Sec-WebSocket-Version: 13\r\n\r\nGET /again HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 10)  # to the end of the connection
            writer.close()
            check(answer.startswith(b"HTTP/1.1 400") and answer.count(b"HTTP/1.1 ") == 1,
                  f"a refused upgrade is answered and the connection closed: {answer[:60]!r}")

            # The cap: three open, the fourth refused with 503, admitted once one closed.
            held = [await websockets.connect(gateway) for _ in range(3)]
            check(await eventually(
                lambda: asyncio.sleep(0, metric(admin_port, "meridian_websocket_tunnels_open") == 3)),
                "three tunnels open in the gauge")
            try:
                extra = await websockets.connect(gateway)
                check(False, "the fourth tunnel is refused")
                await extra.close()
            except websockets.InvalidStatusCode as e:
                check(e.status_code == 503, f"the fourth tunnel is refused with 503 ({e.status_code})")
            check(metric(admin_port, "meridian_websocket_refused_total") == 1, "refusal counted")

            # A reload leaves open tunnels running.
            with open(f"{tmp}/node.yaml", "w") as f:
                f.write(config(tmp, upstream_port, proxy_port, admin_port,
                               "  - name: extra\n    match: {path_prefix: /extra}\n"
                               "    upstream: ws\n"))
            node.send_signal(signal.SIGHUP)
            async def reloaded():
                req = urllib.request.Request(f"http://127.0.0.1:{admin_port}/config",
                                             headers={"Authorization": "Bearer " + TOKEN})
                try:
                    return b'"extra"' in urllib.request.urlopen(req, timeout=2).read()
                except OSError:
                    return False
            check(await eventually(reloaded), "the reload took effect")
            for i, ws in enumerate(held):
                await ws.send(f"still {i}")
                check(await asyncio.wait_for(ws.recv(), 5) == f"still {i}",
                      f"tunnel {i} still relays after the reload")
            await held[0].close()
            async def admitted():
                try:
                    ws = await websockets.connect(gateway)
                except websockets.InvalidStatusCode:
                    return False
                held[0] = ws
                return True
            check(await eventually(admitted), "a tunnel is admitted again once one closed")
            for ws in held:
                await ws.close()
            check(await eventually(lambda: asyncio.sleep(
                0, metric(admin_port, "meridian_websocket_tunnels_open") == 0)),
                "the gauge goes back to 0")
            check((metric(admin_port, "meridian_websocket_bytes_to_upstream_total") or 0) > 1 << 20,
                  "bytes to the upstream counted")
            check((metric(admin_port, "meridian_websocket_bytes_to_client_total") or 0) > 1 << 20,
                  "bytes to the client counted")

            # The idle timeout: a tunnel nobody speaks on is closed after websocket_idle_timeout
            # (the sweep looks every 50 ms), and not before.
            with open(f"{tmp}/node.yaml", "w") as f:
                f.write(config(tmp, upstream_port, proxy_port, admin_port,
                               limits=", websocket_idle_timeout: 1s"))
            node.send_signal(signal.SIGHUP)
            async def idle_applied():
                ws = await websockets.connect(gateway, ping_interval=None)
                opened = time.monotonic()
                try:
                    await asyncio.wait_for(ws.wait_closed(), 5)
                except asyncio.TimeoutError:
                    await ws.close()
                    return False
                return time.monotonic() - opened >= 0.9
            check(await eventually(idle_applied, 20),
                  "an idle tunnel is closed after websocket_idle_timeout, not before")

            # Drain: an open tunnel is closed with 1001 (going away) at the end of the drain
            # period (15 s), and the node then exits.
            with open(f"{tmp}/node.yaml", "w") as f:
                f.write(config(tmp, upstream_port, proxy_port, admin_port))
            node.send_signal(signal.SIGHUP)
            async def long_idle_applied():
                ws = await websockets.connect(gateway, ping_interval=None)
                try:
                    await asyncio.wait_for(ws.wait_closed(), 2)
                    return False
                except asyncio.TimeoutError:
                    await ws.close()
                    return True
            check(await eventually(long_idle_applied, 20), "the idle timeout is back to 5m")
            ws = await websockets.connect(gateway, ping_interval=None)
            await ws.send("before the drain")
            check(await asyncio.wait_for(ws.recv(), 5) == "before the drain", "tunnel open")
            node.send_signal(signal.SIGTERM)
            started = time.monotonic()
            try:
                await asyncio.wait_for(ws.wait_closed(), 30)
            except asyncio.TimeoutError:
                pass
            waited = time.monotonic() - started
            check(ws.close_code == 1001 and 12 < waited < 20,
                  f"SIGTERM: the tunnel gets close 1001 near the end of the drain period "
                  f"({ws.close_code}, after {waited:.1f} s)")
        finally:
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
            try:
                node.wait(20)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
            log.close()
            # A sanitizer's report (TSan exits 66) or a crash fails the test too.
            check(node.returncode == 0, f"meridian drained and exited 0 ({node.returncode})")
            if failures:
                print(open(f"{tmp}/node.log").read()[-4000:])
    server.close()
    await server.wait_closed()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1])))
