"""kill -9 between a burst of fires being recorded ahead and their due time, restart: every fire
is one run, every call goes out once — at or after the due time, never before."""

from __future__ import annotations

import collections
import json
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.server import Server, all_runs
from tests.support.waiting import eventually_sync

N = 100


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the http target's pool expects

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        assert isinstance(self.server, _Sink)
        self.server.seen.append((time.time(), self.headers.get("idempotency-key", "")))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class _Sink(ThreadingHTTPServer):
    request_queue_size = 1024  # the default listen backlog of 5 drops most of 100 connects made at once
    daemon_threads = True
    seen: list[tuple[float, str]]
    """(arrival, Idempotency-Key) of every call."""


@pytest.fixture
def sink() -> Iterator[_Sink]:
    server = _Sink(("127.0.0.1", 0), _Handler)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_kill9_after_the_fires_are_recorded_ahead_each_runs_once_at_its_time(
    tmp_path: Path, sink: _Sink
) -> None:
    due = (datetime.now(UTC) + timedelta(seconds=8)).replace(microsecond=0)
    url = f"http://127.0.0.1:{sink.server_address[1]}/hook"
    jobs = [
        {
            "name": f"at-{i:03d}",
            "triggers": [{"type": "at", "at": due.isoformat()}],
            "target": {"type": "http", "url": url, "allow_private": True},
        }
        for i in range(N)
    ]
    jobs_file = tmp_path / "jobs.json"
    jobs_file.write_text(json.dumps({"jobs": jobs}))
    data = tmp_path / "data"
    seen = sink.seen

    srv = Server(data, jobs_file).start()
    try:
        with srv.client() as c:

            def recorded() -> bool:
                runs = c.get("/runs", params={"limit": 500}).json()["items"]
                return len(runs) == N and all(r["state"] == "pending" for r in runs)

            eventually_sync(recorded, 15, "every fire recorded ahead, pending")
        assert time.time() < due.timestamp(), "recorded before the due time (else the test proves nothing)"
        srv.kill9()
        assert not seen, "no call before the due time"
    finally:
        if srv.proc and srv.proc.poll() is None:
            srv.kill9()

    srv = Server(data, jobs_file, port=srv.port).start()
    try:
        with srv.client() as c:

            def ended() -> list[dict[str, object]] | None:
                runs = [r for i in range(N) for r in all_runs(c, f"at-{i:03d}")]
                return runs if len(runs) == N and all(r["state"] == "succeeded" for r in runs) else None

            try:
                runs = eventually_sync(ended, 60, "every run to succeed after the restart")
            except AssertionError:
                states = collections.Counter(str(r["state"]) for i in range(N) for r in all_runs(c, f"at-{i:03d}"))
                raise AssertionError(f"run states: {dict(states)}; calls seen: {len(seen)}") from None
            events = c.get("/events", params={"limit": 500}).json()["items"]
        assert len({r["key"] for r in runs}) == N, "one run per fire"
        calls = collections.Counter(key for _, key in seen)
        assert set(calls) == {r["id"] for r in runs}
        assert all(n == 1 for n in calls.values()), f"called twice: {[k for k, n in calls.items() if n > 1]}"
        assert min(t for t, _ in seen) >= due.timestamp(), "never before the due time"
        made = [e for e in events if e["outcome"] == "run"]
        assert len(made) == N, "the fires recorded again after the restart are duplicates, not runs"
    finally:
        srv.stop()
        print(srv.output()[-2000:], file=sys.stderr)
