#!/usr/bin/env python3
"""The chaos suite's upstream: a small keep-alive HTTP/1.1 server, one per region.

    upstream.py --listen 0.0.0.0:9000 --name eu-west

Every path answers 200 with a short JSON body naming the server, except /flaky..., which
answers 503 while failing is switched on (POST /__chaos/flaky?fail=1, off with fail=0): the
"upstream failure" workload that trips circuit breakers.
"""
import argparse
import http.server
import json
import signal
import sys
import threading


class State:
    failing = False
    lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_name_ = "upstream"

    def log_message(self, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.path.startswith("/__chaos/flaky"):
            State.failing = "fail=1" in self.path
            return self.reply(200, {"failing": State.failing})
        if self.path.startswith("/flaky") and State.failing:
            return self.reply(503, {"error": "injected", "server": self.server_name_})
        return self.reply(200, {"server": self.server_name_, "path": self.path})

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = handle_any


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--name", default="upstream")
    args = ap.parse_args()
    host, port = args.listen.rsplit(":", 1)
    Handler.server_name_ = args.name
    http.server.ThreadingHTTPServer.daemon_threads = True
    # A client (meridian) closing a pooled connection mid-reply is normal under chaos.
    http.server.ThreadingHTTPServer.handle_error = lambda self, request, address: None
    http.server.ThreadingHTTPServer.request_queue_size = 256
    server = http.server.ThreadingHTTPServer((host, int(port)), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


if __name__ == "__main__":
    main()
