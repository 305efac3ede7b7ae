"""Cancelling a run of the fleet reaches its runner (`--role scheduler` + `--role runner`
subprocesses, real RabbitMQ on a vhost of the test's own): the HTTP call in progress is aborted —
the far end sees its connection closed — the run ends `cancelled` once, the work message is
acknowledged and nothing is called again; a run cancelled while its work message waited in the
queue is not called by the runner that takes it later (one started after the cancel)."""

from __future__ import annotations

import select
import socket
import threading
import time
from pathlib import Path
from typing import Any

from tests.support.brokers import RabbitVhost, rabbitmqctl
from tests.support.fleet import metric, runner, scheduler
from tests.support.waiting import eventually_sync


class HangingServer:
    """An HTTP server that records each request's `Idempotency-Key`; a request to /hang gets no
    answer: the server watches its connection until the client closes it (recorded in `dropped`)
    or `hold` seconds pass; any other path is answered 200 at once."""

    def __init__(self, hold: float = 120.0) -> None:
        self.hold = hold
        self.keys: list[str] = []
        self.dropped: set[str] = set()
        self._lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self._closing = False
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while not self._closing:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, rest = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
                length = int(headers.get("content-length", "0"))
                while len(rest) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    rest += chunk
                buf = rest[length:]
                key = headers.get("idempotency-key", "")
                with self._lock:
                    self.keys.append(key)
                if path.startswith("/hang"):
                    self._watch(conn, key)
                    return
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def _watch(self, conn: socket.socket, key: str) -> None:
        """The server's own long work: it ends when the client goes away (EOF or reset)."""
        deadline = time.monotonic() + self.hold
        while time.monotonic() < deadline and not self._closing:
            readable, _, _ = select.select([conn], [], [], 0.2)
            if readable:
                try:
                    data = conn.recv(1)
                except OSError:
                    data = b""
                if not data:
                    with self._lock:
                        self.dropped.add(key)
                    return

    def seen(self) -> list[str]:
        with self._lock:
            return list(self.keys)

    def __enter__(self) -> HangingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing = True
        self.sock.close()


def jobs_file(tmp_path: Path, srv: HangingServer) -> Path:
    path = tmp_path / "jobs.yaml"
    path.write_text(
        f"""
jobs:
  - name: hang
    timeout: 300s
    target: {{type: http, url: "{srv.url('/hang')}", method: POST, timeout: 300s}}
  - name: quick
    target: {{type: http, url: "{srv.url('/quick')}", method: POST, timeout: 10s}}
"""
    )
    return path


def queue_counts(vhost: RabbitVhost, queue: str) -> tuple[int, int]:
    """(ready, unacknowledged) messages of `queue` on the test's vhost."""
    out = rabbitmqctl("list_queues", "-p", vhost.name, "name", "messages_ready", "messages_unacknowledged")
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == queue:
            return int(parts[1]), int(parts[2])
    raise AssertionError(f"no queue {queue} on {vhost.name}: {out}")


def trigger(c: Any, job: str) -> str:
    r = c.post(f"/jobs/{job}/runs", json={})
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


def ended(c: Any, run_id: str) -> dict[str, Any]:
    return eventually_sync(
        lambda: (doc := c.get(f"/runs/{run_id}").json())["state"]
        in ("succeeded", "failed", "timed_out", "cancelled", "interrupted")
        and doc,
        timeout=60,
        what=f"run {run_id} ended",
    )


def test_cancel_reaches_the_runner_and_a_queued_cancelled_run_is_not_run(tmp_path: Path, vhost: RabbitVhost) -> None:
    with HangingServer() as far:
        sched = scheduler(tmp_path / "s", jobs_file(tmp_path, far), vhost.url)
        first = runner(tmp_path / "r1", vhost.url)
        with sched, sched.client() as c:
            with first:
                # 1. cancelled while its runner calls: the call is aborted
                running = trigger(c, "hang")
                eventually_sync(lambda: running in far.seen(), timeout=60, what="the call reached the far end")
                eventually_sync(
                    lambda: c.get(f"/runs/{running}").json()["state"] == "running", timeout=60, what="running"
                )
                r = c.post(f"/runs/{running}/cancel")
                assert r.status_code == 200, r.text
                eventually_sync(
                    lambda: running in far.dropped, timeout=60, what="the runner closed the call's connection"
                )
                doc = ended(c, running)
                assert doc["state"] == "cancelled"
                states = [h["state"] for h in doc["history"]]
                assert states.count("cancelled") == 1, states
                eventually_sync(
                    lambda: queue_counts(vhost, "jobwire.work") == (0, 0), timeout=60, what="work message acked"
                )
                assert metric(first.url, "jobwire_runner_cancels_total") == 1
            # 2. cancelled while its work message waits (no runner up): the runner started later
            # acknowledges it without calling
            waiting = trigger(c, "hang")
            eventually_sync(
                lambda: metric(sched.url, "jobwire_fleet_published_total") >= 2, timeout=60, what="published"
            )
            # (RabbitMQ's queue counts lag by a few seconds: waited for, not read once)
            eventually_sync(lambda: queue_counts(vhost, "jobwire.work") == (1, 0), timeout=60, what="it waits")
            assert c.post(f"/runs/{waiting}/cancel").json()["state"] == "cancelled"
            later = runner(tmp_path / "r2", vhost.url)
            with later:
                after = trigger(c, "quick")  # queued behind the cancelled one
                assert ended(c, after)["state"] == "succeeded"
                eventually_sync(
                    lambda: queue_counts(vhost, "jobwire.work") == (0, 0), timeout=60, what="both acked"
                )
                # 1, not 2: had the first run's work message not been acked, it would be back here
                assert metric(later.url, "jobwire_runner_cancels_total") == 1, "skipped, not run"
            seen = far.seen()
            assert waiting not in seen, "a run cancelled in the queue was called"
            assert seen.count(running) == 1, "the cancelled call was not made again"
            assert c.get(f"/runs/{waiting}").json()["state"] == "cancelled"
            assert c.get(f"/runs/{running}").json()["state"] == "cancelled"
