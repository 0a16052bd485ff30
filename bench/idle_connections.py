#!/usr/bin/env python3
"""Opens N keep-alive client connections to a proxy, sends one request on each, leaves them idle,
and prints the proxy process's resident memory before and after.

usage: idle_connections.py PROXY_PORT PROXY_PID [N]
"""
import resource
import socket
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def main():
    port, pid = int(sys.argv[1]), int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 10000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    before = rss_kib(pid)
    conns = []
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(request)
        conns.append(s)
        if len(conns) % 500 == 0:  # read the answers in batches to keep the backlog short
            for c in conns[-500:]:
                c.recv(65536)
    for c in conns[len(conns) - len(conns) % 500:]:
        c.recv(65536)
    time.sleep(1.0)
    after = rss_kib(pid)
    print(f"idle keep-alive connections: {n}")
    print(f"proxy RSS before: {before / 1024:.1f} MiB, after: {after / 1024:.1f} MiB, "
          f"growth: {(after - before) / 1024:.1f} MiB ({(after - before) * 1024 / n:.0f} bytes/conn)")
    for c in conns:
        c.close()


if __name__ == "__main__":
    main()
