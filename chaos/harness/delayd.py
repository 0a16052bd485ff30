#!/usr/bin/env python3
"""Userspace inter-region delay: the chaos topology's replacement for `tc netem`.

Runs in the core namespace. Policy routing sends every packet routed between region bridges
into a TUN device; this process reads each packet, holds it for the one-way delay configured
between the source and destination regions (plus uniform jitter, never reordering a pair), and
writes it back into the TUN device, from where the kernel routes it to the destination bridge.

    delayd.py --tun NAME --region 10.88.1.0/24=eu-west ... --delay eu-west,us-east=40 ...
              [--jitter 5]

Delays are in milliseconds and symmetric unless both directions are given. Packets to or from
an address outside every region subnet pass without delay. The queue is capped (64k packets):
beyond it packets are dropped, as a full router buffer would.
"""
import argparse
import fcntl
import heapq
import ipaddress
import os
import random
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MAX_QUEUE = 65536


def open_tun(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tun", required=True)
    ap.add_argument("--region", action="append", default=[], help="CIDR=REGION")
    ap.add_argument("--delay", action="append", default=[], help="A,B=MS (one-way A to B)")
    ap.add_argument("--jitter", type=float, default=0.0, help="+- ms, uniform")
    args = ap.parse_args()

    nets = []
    for spec in args.region:
        cidr, region = spec.split("=", 1)
        net = ipaddress.ip_network(cidr)
        nets.append((int(net.network_address), int(net.netmask), region))
    delays = {}
    for spec in args.delay:
        pair, ms = spec.split("=", 1)
        a, b = pair.split(",", 1)
        delays[(a, b)] = float(ms) / 1000.0
        delays.setdefault((b, a), float(ms) / 1000.0)
    jitter = args.jitter / 1000.0

    def region_of(addr_bytes):
        value = int.from_bytes(addr_bytes, "big")
        for net, mask, region in nets:
            if value & mask == net:
                return region
        return None

    fd = open_tun(args.tun)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    queue = []  # (deliver_at, seq, packet)
    last_for_pair = {}
    seq = 0
    forwarded = dropped = 0
    while True:
        timeout = None
        if queue:
            timeout = max(0.0, queue[0][0] - time.monotonic())
        readable, _, _ = select.select([fd], [], [], timeout)
        now = time.monotonic()
        if readable:
            for _ in range(256):
                try:
                    packet = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if len(packet) < 20 or packet[0] >> 4 != 4:
                    continue  # IPv4 only; the topology has nothing else
                src, dst = region_of(packet[12:16]), region_of(packet[16:20])
                delay = delays.get((src, dst), 0.0)
                if delay > 0 and jitter > 0:
                    delay = max(0.0, delay + random.uniform(-jitter, jitter))
                at = now + delay
                pair = (src, dst)
                at = max(at, last_for_pair.get(pair, 0.0))  # jitter must not reorder a pair
                last_for_pair[pair] = at
                if len(queue) >= MAX_QUEUE:
                    dropped += 1
                    continue
                seq += 1
                heapq.heappush(queue, (at, seq, packet))
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, packet = heapq.heappop(queue)
            try:
                os.write(fd, packet)
                forwarded += 1
            except OSError:
                dropped += 1


if __name__ == "__main__":
    main()
