#!/usr/bin/env python3
"""GRIP backend for the Pushpin run of bench/compare (Python 3 standard library).

Pushpin proxies every subscribe request here; the answer tells it to hold the
request open as a stream subscribed to one channel:

    GET /sub/{topic}  ->  200, Content-Type: text/event-stream,
                          Grip-Hold: stream, Grip-Channel: {topic}, body ":ok\\n\\n"

The first body bytes tell clients the stream is open. The server is threaded:
a single-threaded one stalls subscribes while Pushpin opens thousands of them.

Usage: grip_backend.py [--listen HOST:PORT]   (prints "listening on http://ADDR")
"""

import argparse
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        path = urlsplit(self.path).path
        if not path.startswith("/sub/") or len(path) <= len("/sub/"):
            self.reply(404, "text/plain", b"not found\n")
            return
        topic = unquote(path[len("/sub/"):])
        self.reply(
            200,
            "text/event-stream",
            b":ok\n\n",
            {"Grip-Hold": "stream", "Grip-Channel": topic, "Cache-Control": "no-cache"},
        )

    def reply(self, status, content_type, body, headers=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 - quiet: one line per subscribe is noise
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (default: a free port)")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    server = Server((host or "127.0.0.1", int(port)), Handler)
    print(f"listening on http://{server.server_address[0]}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
