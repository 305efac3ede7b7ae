"""The far end of the example's jobs: prints each call (method, path, Idempotency-Key, body) and
answers 200. `python receiver.py [port]` (default 9000)."""

import http.server
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        key = self.headers.get("Idempotency-Key")
        print(f"{self.command} {self.path} Idempotency-Key={key} {body.decode(errors='replace')}", flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_PUT = do_DELETE = do_PATCH = do_POST  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
