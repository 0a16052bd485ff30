#!/usr/bin/env python3
"""Sends exactly N GET requests over one keep-alive connection and reads each response.
usage: keepalive_client.py PORT N [HEADER_LINE ...]   (e.g. "Authorization: Bearer x")"""
import socket
import sys

port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
extra = "".join(h + "\r\n" for h in sys.argv[3:]).encode()
req = b"GET / HTTP/1.1\r\nHost: bench\r\n" + extra + b"\r\n"
buf = b""
for _ in range(n):
    s.sendall(req)
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = buf[:end].lower()
            i = head.find(b"content-length:")
            length = int(head[i + 15:].split(b"\r\n")[0]) if i >= 0 else 0
            if len(buf) >= end + 4 + length:
                status = buf[9:12]
                if status != b"200":
                    sys.exit(f"unexpected status {status!r}")
                buf = buf[end + 4 + length:]
                break
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("connection closed")
        buf += chunk
s.close()
