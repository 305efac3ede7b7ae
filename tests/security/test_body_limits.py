"""Request bodies are bounded (issue 7 #8): an oversized body is answered 413 before it is read,
a chunked one is cut off at the limit, and an unsigned webhook is refused from its headers."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from jobwire.signing import DELIVERY_HEADER
from tests.support.server import Server

LIMIT = 64 * 1024
JOBS = """
jobs:
  - name: echo
    target: {type: local, command: ["true"]}
  - name: hook
    triggers: [{webhook: {secret_env: LIMIT_HOOK_SECRET}}]
    target: {type: local, command: ["true"]}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("limits")
    jobs = tmp / "jobs.yaml"
    jobs.write_text(JOBS)
    srv = Server(tmp / "data", jobs, JOBWIRE_MAX_BODY_BYTES=str(LIMIT), LIMIT_HOOK_SECRET="s").start()
    yield srv
    srv.stop()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def head_only(srv: Server, path: str, length: int, extra: bytes = b"", first: bytes = b"{") -> bytes:
    """Send a request head declaring `length` bytes and only `first` of the body; return the answer."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n".encode()
            + extra
            + b"\r\n"
            + first
        )
        answer = b""
        while b"\r\n\r\n" not in answer or (answer.startswith(b"HTTP/1.1 413") and not answer.endswith(b"}")):
            chunk = s.recv(65536)  # a 413 closes the connection: read to the end of its JSON body
            if not chunk:
                break
            answer += chunk
        return answer


@pytest.mark.parametrize(
    "path", ["/api/v1/jobs/echo/runs", "/api/v1/jobs", "/api/v1/jobs/hook/webhook", "/api/v1/runs/x/callback"]
)
def test_declared_oversize_is_refused_before_reading(server: Server, path: str) -> None:
    assert server.proc
    before = rss_kib(server.proc.pid)
    answer = head_only(server, path, 50 * 1024 * 1024)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b'"reason":"PayloadTooLarge"' in answer and b"JOBWIRE_MAX_BODY_BYTES" in answer
    assert rss_kib(server.proc.pid) - before < 10 * 1024  # nowhere near 50 MB


def chunks(total: int, size: int = 16 * 1024) -> Iterator[bytes]:
    yield b'{"p": "'
    sent = 0
    while sent < total:
        yield b"x" * size
        sent += size
    yield b'"}'


def test_chunked_body_is_cut_at_the_limit(server: Server) -> None:
    for path in ("/api/v1/jobs/echo/runs", "/api/v1/jobs"):
        r = httpx.post(
            server.url + path,
            content=chunks(4 * LIMIT),
            headers={"content-type": "application/json"},
            timeout=10,
        )
        assert r.status_code == 413, (path, r.status_code, r.text)
        assert r.json()["error"]["reason"] == "PayloadTooLarge"


def test_body_at_the_limit_is_accepted(server: Server) -> None:
    body = b'{"p": "' + b"x" * (LIMIT - 9) + b'"}'
    assert len(body) == LIMIT
    r = httpx.post(
        server.url + "/api/v1/jobs/echo/runs", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code != 413, r.text
    body += b" "
    r = httpx.post(
        server.url + "/api/v1/jobs/echo/runs", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413


def test_unsigned_webhook_refused_without_reading_the_body(server: Server) -> None:
    # under the limit, but unsigned: refused from the headers, while the body is still unsent
    answer = head_only(server, "/api/v1/jobs/hook/webhook", LIMIT - 1, DELIVERY_HEADER.encode() + b": d-1\r\n")
    assert answer.startswith(b"HTTP/1.1 403"), answer[:300]


def test_four_oversized_bodies_at_once_do_not_grow_memory(server: Server) -> None:
    """The attack: four 50 MB bodies sent in full at once took RSS to 578 MB."""
    assert server.proc
    before = rss_kib(server.proc.pid)
    socks = []
    for _ in range(4):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        s.sendall(
            b"POST /api/v1/jobs/hook/webhook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/json\r\nJobwire-Signature: t=1,v1=" + b"0" * 64 + b"\r\n"
            + DELIVERY_HEADER.encode() + b": d-2\r\n\r\n"
        )
        socks.append(s)
    chunk = b"x" * (1024 * 1024)
    framed = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    for s in socks:
        try:
            for _ in range(50):
                s.sendall(framed)
        except OSError:
            pass  # the server answered and closed: what we want
        s.close()
    assert rss_kib(server.proc.pid) - before < 40 * 1024
    assert httpx.get(server.url + "/healthz").status_code == 200
