"""The runner fleet in tests: a scheduler and runners as `jobwire serve` subprocesses on one
RabbitMQ vhost, and an HTTP server (in the test process) that records every request's
`Idempotency-Key` and the client port it came from."""

from __future__ import annotations

import http.server
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.server import Server, free_port


@dataclass(frozen=True, slots=True)
class Hit:
    key: str
    path: str
    attempt: str
    peer_port: int
    at: float


class KeyServer:
    """A keep-alive HTTP/1.1 server recording each request's `Idempotency-Key`; every answer is 200
    after `delay` seconds (so calls are in flight long enough to be killed under), or after
    `slow_delay` for a path under /slow (longer than a job's timeout)."""

    def __init__(self, delay: float = 0.0, slow_delay: float = 5.0) -> None:
        self.delay = delay
        self.slow_delay = slow_delay
        self.hits: list[Hit] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                hit = Hit(
                    self.headers.get("Idempotency-Key", ""),
                    self.path,
                    self.headers.get("Jobwire-Attempt", ""),
                    int(self.client_address[1]),
                    time.monotonic(),
                )
                with outer._lock:
                    outer.hits.append(hit)
                delay = outer.slow_delay if self.path.startswith("/slow") else outer.delay
                if delay:
                    time.sleep(delay)  # the server's own work, not test synchronisation
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_POST = do_GET = do_PUT = _any

            def log_message(self, *args: Any) -> None:
                pass

        class Listener(http.server.ThreadingHTTPServer):
            request_queue_size = 1024  # runners open dozens of connections at once (default: 5)

        self.httpd = Listener(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def keys(self) -> list[str]:
        with self._lock:
            return [h.key for h in self.hits]

    def __enter__(self) -> KeyServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def fleet_env(broker_url: str, **extra: str) -> dict[str, str]:
    return {
        "BROKER_URL": broker_url,
        "JOBWIRE_HTTP_ALLOW_PRIVATE": "true",
        "JOBWIRE_AMQP_STATUS": "false",
        **extra,
    }


def scheduler(data: Path, jobs: Path | None, broker_url: str, port: int | None = None, **env: str) -> Server:
    return Server(data, jobs, port=port, **fleet_env(broker_url, JOBWIRE_ROLE="scheduler", **env))


def runner(folder: Path, broker_url: str, slots: int = 16, **env: str) -> Server:
    return Server(
        folder,
        None,
        port=free_port(),
        **fleet_env(broker_url, JOBWIRE_ROLE="runner", JOBWIRE_RUNNER_SLOTS=str(slots), **env),
    )


def tcp_ports_to(pid: int, remote_port: int) -> set[int]:
    """Local ports of the TCP connections process `pid` holds open to 127.0.0.1:`remote_port`
    (from /proc: its socket inodes, matched in /proc/net/tcp)."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        local, remote, inode = parts[1], parts[2], parts[9]
        if inode in inodes and int(remote.split(":")[1], 16) == remote_port:
            ports.add(int(local.split(":")[1], 16))
    return ports


def metric(url: str, name: str, having: str = "") -> float:
    """The sum of every sample of metric `name` at `url`/metrics (with `having`: of those whose
    line holds it, e.g. `state="succeeded"`)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {") and having in line:
            total += float(line.rsplit(" ", 1)[1])
    return total
