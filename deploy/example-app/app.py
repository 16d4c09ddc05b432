#!/usr/bin/env python3
"""A stand-in for the legacy application that hookguard protects.

It listens on HOST:PORT (default 127.0.0.1:3000: only hookguard, next to it, can reach it),
answers every POST with 200 {"ok": true}, and prints one JSON line per request: method, path,
the X-Webhook-* headers hookguard adds, and the body. GET /healthz answers 200 (for probes).

Used by deploy/compose.yaml, the Kubernetes example (deploy/kubernetes/legacy-app-demo.yaml
carries a copy) and deploy/check.sh. Standard library only. Replace it with your real app.
"""

import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    server_version = "legacy-app-demo"
    protocol_version = "HTTP/1.1"

    def _reply(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/healthz":
            self._reply(200, {"ok": True})
        else:
            self._reply(404, {"error": "not_found"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        record = {
            "method": self.command,
            "path": self.path,
            "webhook_headers": {
                k: v for k, v in self.headers.items() if k.lower().startswith("x-webhook-")
            },
            "content_type": self.headers.get("Content-Type"),
            "body": body,
        }
        print(json.dumps(record, sort_keys=True), flush=True)
        self._reply(200, {"ok": True})

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        sys.stderr.write("legacy-app: %s\n" % (format % args))


def main():
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "3000"))
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    # Exit promptly and cleanly on SIGTERM (docker stop, Kubernetes).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(json.dumps({"listening": "%s:%d" % (host, port)}), flush=True)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
