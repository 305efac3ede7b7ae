"""Defect 9 (connections): half-sent requests time out, and open connections are capped so
clients that hold connections without sending cannot take the API down — against a real
`jobwire serve` process, since the behaviour is about sockets."""

from __future__ import annotations

import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.server import Server
from tests.support.waiting import eventually_sync

JOBS = """
jobs:
  - name: ok
    target: {type: local, command: ["true"]}
"""
CAP = 64
HELD = 600


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(JOBS)
    srv = Server(
        tmp_path / "data", jobs, JOBWIRE_HEADER_TIMEOUT="1s", JOBWIRE_MAX_CONNECTIONS=str(CAP)
    ).start()
    yield srv
    srv.stop()


def half_sent(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # no blank line: the head never ends
    return s


def closed_by_peer(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        data = s.recv(4096)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return data == b"" or data.startswith(b"HTTP/1.1 503")


def test_half_sent_request_head_is_closed_after_the_header_timeout(server: Server) -> None:
    s = half_sent(server.port)
    try:
        # a byte now and then does not extend the deadline
        s.sendall(b"X-Slow: 1\r\n")
        eventually_sync(lambda: closed_by_peer(s), 10, "the server to close a half-sent request")
    finally:
        s.close()
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200


def test_connections_over_the_cap_do_not_lock_out_the_api(server: Server) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < HELD + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, HELD + 1000), hard))
    held = [half_sent(server.port) for _ in range(HELD)]
    try:
        # the server keeps at most CAP of them: the oldest half-sent ones were closed for the new
        eventually_sync(
            lambda: sum(closed_by_peer(s) for s in held) >= HELD - CAP, 10, "connections over the cap closed"
        )
        started = time.monotonic()
        with server.client() as c:
            assert c.get("/jobs").status_code == 200
            assert c.post("/jobs/ok/runs", json={}).status_code in (200, 201, 202)
        assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
        assert time.monotonic() - started < 10
    finally:
        for s in held:
            s.close()
    out = server.output()
    assert "connections closed or refused" in out
    assert out.count("connections closed or refused") <= 3  # one summary line per 10 s, not one per connection


def test_a_busy_keep_alive_connection_keeps_moving_its_deadline(server: Server) -> None:
    """Triggers answered on the connection itself (`rawfront.py`), one every 0.4 s for longer than
    twice the header timeout (1 s): the connection stays open — the guard's timer is kept across
    requests and looks at the deadline as it is when it fires — and once idle it is closed at the
    header timeout, the shorter of it and the keep-alive timeout (5 s), as uvicorn's answers are."""
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    request = (
        b"POST /api/v1/jobs/ok/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    )
    try:
        reader = s.makefile("rb")
        for _ in range(6):
            s.sendall(request)
            status = reader.readline()
            assert status.split(b" ")[1] in (b"200", b"201", b"202"), status
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            reader.read(length)
            answered = time.monotonic()
            time.sleep(0.4)  # the pace of the scenario, not a wait for a condition
        eventually_sync(lambda: closed_by_peer(s), 10, "the idle connection closed")
        assert time.monotonic() - answered < 3.5  # the header timeout, not the keep-alive one
    finally:
        s.close()
