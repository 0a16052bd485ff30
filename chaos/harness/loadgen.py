#!/usr/bin/env python3
"""The chaos suite's load client: paced keep-alive HTTP/1.1 requests against one node.

    loadgen.py --target 127.0.0.1:8080 --out FILE --work /limited=150:3 --work /ok=50:1

Each --work PATH=RATE[:THREADS] sends RATE requests a second to PATH over THREADS connections.
Results are counted in 100 ms buckets by the time each request completed (Unix ms) and appended
to FILE as JSON lines every half second:
    {"t": BUCKET_MS, "path": PATH, "s2xx": N, "s429": N, "s5xx": N, "other": N, "err": N,
     "lat": {UPPER_MS: N, ...}, "reset": {SECONDS: N, ...}}
`err` counts requests that got no response (refused, reset, timed out after 2 s). `lat` is a
histogram of the answered requests' latency (send to complete response): the count of those at
most UPPER_MS (one of LAT_BOUNDS_MS, the smallest that holds it; "inf" beyond the last).
`reset` counts the 2xx answers by their RateLimit-Reset (seconds to the end of the window the
limit decided them in): with the completion bucket it tells which window that was, whatever the
answer's latency (cluster.decided_windows).
"""
import argparse
import json
import signal
import socket
import sys
import threading
import time

BUCKET_MS = 100
LAT_BOUNDS_MS = (0.5, 1, 2, 3, 5, 10, 20, 50, 100, 125, 150, 175, 200, 250, 300, 500, 1000, 2000)


class Counts:
    def __init__(self):
        self.lock = threading.Lock()
        self.buckets = {}  # (bucket, path) -> [s2xx, s429, s5xx, other, err, {lat: n}]

    def add(self, path, status, latency_s=None, reset=None):
        b = int(time.time() * 1000) // BUCKET_MS * BUCKET_MS
        if status is None:
            i = 4
        elif 200 <= status < 300:
            i = 0
        elif status == 429:
            i = 1
        elif status >= 500:
            i = 2
        else:
            i = 3
        lat = None
        if latency_s is not None:
            ms = latency_s * 1000
            lat = next((str(u) for u in LAT_BOUNDS_MS if ms <= u), "inf")
        with self.lock:
            row = self.buckets.setdefault((b, path), [0, 0, 0, 0, 0, {}, {}])
            row[i] += 1
            if lat is not None:
                row[5][lat] = row[5].get(lat, 0) + 1
            if i == 0 and reset is not None:
                row[6][str(reset)] = row[6].get(str(reset), 0) + 1

    def drain(self, before_ms):
        with self.lock:
            done = {k: v for k, v in self.buckets.items() if k[0] < before_ms}
            for k in done:
                del self.buckets[k]
        return done


def read_response(sock, buf):
    """Reads one response from sock (buf holds bytes already read). Returns (status, rest, close,
    reset): reset is the RateLimit-Reset header's value (seconds), or None."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length, close, chunked, reset = 0, False, False, None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"ratelimit-reset":
            reset = int(value.strip())
        elif name == b"content-length":
            length = int(value.strip())
        elif name == b"connection" and value.strip().lower() == b"close":
            close = True
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while b"0\r\n\r\n" not in rest:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            rest += chunk
        rest = rest.split(b"0\r\n\r\n", 1)[1]
    else:
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            rest += chunk
        rest = rest[length:]
    return status, rest, close, reset


def worker(host, port, path, interval, counts, stop):
    request = f"GET {path} HTTP/1.1\r\nHost: chaos\r\nUser-Agent: meridian-chaos\r\n\r\n".encode()
    sock, buf = None, b""
    next_at = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        if next_at > now:
            stop.wait(next_at - now)
        next_at = max(next_at + interval, time.monotonic() - interval)
        try:
            if sock is None:
                sock = socket.create_connection((host, port), timeout=2)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                buf = b""
            sent = time.monotonic()
            sock.sendall(request)
            status, buf, close, reset = read_response(sock, buf)
            counts.add(path, status, time.monotonic() - sent, reset)
            if close:
                sock.close()
                sock = None
        except (OSError, ValueError, IndexError):
            counts.add(path, None)
            if sock is not None:
                sock.close()
            sock = None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", action="append", default=[])
    args = ap.parse_args()
    host, port = args.target.rsplit(":", 1)
    counts, stop = Counts(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threads = []
    for spec in args.work:
        path, _, rest = spec.partition("=")
        rate, _, n = rest.partition(":")
        n = int(n or 1)
        for _ in range(n):
            t = threading.Thread(target=worker, daemon=True,
                                 args=(host, int(port), path, n / float(rate), counts, stop))
            t.start()
            threads.append(t)
    with open(args.out, "a", buffering=1) as out:
        def flush(before):
            for (b, path), row in sorted(counts.drain(before).items()):
                out.write(json.dumps({"t": b, "path": path, "s2xx": row[0], "s429": row[1],
                                      "s5xx": row[2], "other": row[3], "err": row[4],
                                      "lat": row[5], "reset": row[6]}) + "\n")
        while not stop.wait(0.5):
            flush(int(time.time() * 1000) // BUCKET_MS * BUCKET_MS - BUCKET_MS)
        for t in threads:
            t.join(timeout=3)
        flush(1 << 62)


if __name__ == "__main__":
    main()
