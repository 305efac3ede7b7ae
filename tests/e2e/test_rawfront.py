"""Triggers answered on the connection (`api/rawfront.py`), against a real `jobwire serve`.

Each request is sent twice: on a fresh connection, where the raw front answers it (or hands it to
uvicorn), and on a connection that asked `GET /healthz` first, which the raw front has handed to
uvicorn for good, so `fastpath.TriggerFastPath` / the FastAPI route answers. Status, the headers a
client reads and the body (run ids and times aside) must be the same. Then what only a socket
shows: pipelined requests answered in order across the hand-over, a body that arrives after its
head, `Connection: close`, and the keep-alive timeout after a raw answer.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.server import Server
from tests.support.waiting import eventually_sync

JOBS = """
jobs:
  - name: ok
    parameters:
      - {name: who, default: nobody}
      - {name: password, secret: true, default: x}
    target: {type: local, command: ["true"]}
"""
TOKENS = "w-token:read,write;r-token:read"
W = b"Authorization: Bearer w-token\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("rawfront")
    jobs = tmp / "jobs.yaml"
    jobs.write_text(JOBS)
    srv = Server(tmp / "data", jobs, JOBWIRE_API_TOKENS=TOKENS, JOBWIRE_KEEPALIVE_TIMEOUT="2s").start()
    yield srv
    srv.stop()


def request(path: str = "/api/v1/jobs/ok/runs", body: bytes = b"", headers: bytes = W, ctype: bytes | None = None) -> bytes:
    head = b"POST %s HTTP/1.1\r\nHost: t\r\n%s" % (path.encode(), headers)
    if ctype is not None:
        head += b"Content-Type: %s\r\n" % ctype
    if body:
        head += b"Content-Length: %d\r\n" % len(body)
    return head + b"\r\n" + body


class Conn:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def read(self) -> tuple[int, dict[str, str], bytes]:
        """One response: status, headers (lower-case names), body."""
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        size = int(headers.get("content-length", "0"))
        while len(self.buf) < size:
            self._more()
        body, self.buf = self.buf[:size], self.buf[size:]
        return int(lines[0].split()[1]), headers, body

    def _more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed by the server")
        self.buf += data

    def send(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        self.sock.sendall(raw)
        return self.read()

    def closed(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except TimeoutError:
            return False
        except OSError:
            return True

    def close(self) -> None:
        self.sock.close()


def handed_over(port: int) -> Conn:
    conn = Conn(port)
    assert conn.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")[0] == 200
    return conn


def comparable(body: bytes) -> Any:
    """The answer without what differs from run to run."""
    doc = json.loads(body) if body else None
    if isinstance(doc, dict) and "id" in doc:
        drop = {"id", "key", "event_id", "created_at", "history", "updated_at"}
        return {k: v for k, v in doc.items() if k not in drop}
    if isinstance(doc, dict) and "error" in doc:
        return {**doc, "error": {**doc["error"], "message": _no_ids(doc["error"]["message"])}}
    return doc


def _no_ids(text: str) -> str:
    return " ".join("<id>" if w.startswith(("e", "r")) and len(w) >= 20 else w for w in text.split())


CASES = [
    ("json body", request(body=b'{"who": "bob", "password": "hunter2"}', ctype=b"application/json")),
    ("no body", request()),
    ("null body", request(body=b"null", ctype=b"application/json")),
    ("json with charset", request(body=b"{}", ctype=b"application/json; charset=utf-8")),
    ("unknown parameter", request(body=b'{"colour": "red"}', ctype=b"application/json")),
    ("unknown job", request(path="/api/v1/jobs/ghost/runs", body=b"{}", ctype=b"application/json")),
    ("a list, not an object", request(body=b"[1, 2]", ctype=b"application/json")),
    ("invalid json", request(body=b"{nope", ctype=b"application/json")),
    ("not utf-8", request(body=b'{"who": "\xff"}', ctype=b"application/json")),
    ("form content type", request(body=b"who=bob", ctype=b"application/x-www-form-urlencoded")),
    ("key too long", request(headers=W + b"Idempotency-Key: " + b"k" * 256 + b"\r\n")),
    ("no token", request(headers=b"")),
    ("read-only token", request(headers=b"Authorization: Bearer r-token\r\n")),
    ("percent-encoded name", request(path="/api/v1/jobs/o%6B/runs")),
    ("query string", request(path="/api/v1/jobs/ok/runs?x=1")),
]


@pytest.mark.parametrize("raw", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_the_raw_front_answers_as_the_app_does(server: Server, raw: bytes) -> None:
    fresh, old = Conn(server.port), handed_over(server.port)
    try:
        a, b = fresh.send(raw), old.send(raw)
    finally:
        fresh.close()
        old.close()
    assert a[0] == b[0]
    assert a[1].get("content-type") == b[1].get("content-type")
    assert a[1].get("idempotency-replayed") == b[1].get("idempotency-replayed")
    assert comparable(a[2]) == comparable(b[2])


def test_idempotency_key_replays_on_both_paths(server: Server) -> None:
    for i, conn in enumerate((Conn(server.port), handed_over(server.port))):
        try:
            key = b"Idempotency-Key: rawfront-%d\r\n" % i
            first = conn.send(request(headers=W + key))
            again = conn.send(request(headers=W + key))
        finally:
            conn.close()
        assert (first[0], again[0]) == (201, 200)
        assert "idempotency-replayed" not in first[1] and again[1]["idempotency-replayed"] == "true"
        assert json.loads(first[2])["id"] == json.loads(again[2])["id"]


def test_pipelined_requests_are_answered_in_order_across_the_hand_over(server: Server) -> None:
    conn = Conn(server.port)
    try:
        conn.sock.sendall(
            request() + request(body=b'{"who": "p"}', ctype=b"application/json")
            + b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n" + request() + request(body=b"[1]", ctype=b"application/json")
        )
        answers = [conn.read() for _ in range(5)]
    finally:
        conn.close()
    assert [a[0] for a in answers] == [201, 201, 200, 201, 422]
    runs = [json.loads(answers[i][2]) for i in (0, 1, 3)]
    assert len({r["id"] for r in runs}) == 3 and runs[1]["params"]["who"] == "p"


def test_a_body_that_comes_after_its_head(server: Server) -> None:
    conn = Conn(server.port)
    try:
        raw = request(body=b'{"who": "later"}', ctype=b"application/json")
        head, body = raw.split(b"\r\n\r\n", 1)
        conn.sock.sendall(head + b"\r\n\r\n")
        conn.sock.sendall(body)
        status, _, answer = conn.read()
    finally:
        conn.close()
    assert status == 201 and json.loads(answer)["params"]["who"] == "later"


def test_connection_close_and_the_keep_alive_timeout(server: Server) -> None:
    conn = Conn(server.port)
    try:
        status, headers, _ = conn.send(request(headers=W + b"Connection: close\r\n"))
        assert status == 201 and headers.get("connection") == "close"
        assert conn.closed(5)
    finally:
        conn.close()
    conn = Conn(server.port)
    try:
        assert conn.send(request())[0] == 201
        started = time.monotonic()
        assert conn.closed(10)  # JOBWIRE_KEEPALIVE_TIMEOUT=2s after the answer
        assert time.monotonic() - started < 8
    finally:
        conn.close()


def test_a_byte_after_a_raw_answer_ends_the_keep_alive_timeout(server: Server) -> None:
    """As uvicorn's keep-alive timer is cancelled by any data: a request head begun after an answer
    is not closed at the keep-alive timeout (2 s here) but has the head deadline (10 s)."""
    conn = Conn(server.port)
    try:
        assert conn.send(request())[0] == 201
        conn.sock.sendall(b"POST /api/v1/jobs/ok/runs HTTP/1.1\r\n")
        assert not conn.closed(3.5)
        conn.sock.sendall(b"Host: t\r\n" + W + b"\r\n")
        assert conn.read()[0] == 201
        assert conn.closed(10)  # idle after this answer: closed at the keep-alive timeout
    finally:
        conn.close()


# --------------------------------------------------------------------------- the job before the answer

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux's value where Python lacks the name


def stamped_recv(sock: socket.socket) -> tuple[bytes, float | None]:
    """`recv` with the kernel's receive stamp of the bytes (`SO_TIMESTAMPNS` set on `sock`)."""
    data, ancdata, _, _ = sock.recvmsg(65536, socket.CMSG_SPACE(16))
    for level, kind, value in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
            sec, nsec = int.from_bytes(value[:8], "little"), int.from_bytes(value[8:16], "little")
            return data, sec + nsec / 1e9
    return data, None


class StampedTarget:
    """An HTTP server in a thread answering 200 to each request on one connection at a time, noting
    the kernel's receive stamp of each request's first bytes by its `Idempotency-Key`."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/"
        self.arrived: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._conn, args=(sock,), daemon=True).start()

    def _conn(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.settimeout(0.2)
        buf, first = b"", None
        with sock:
            while not self.stop.is_set():
                try:
                    data, stamp = stamped_recv(sock)
                except TimeoutError:
                    continue
                if not data:
                    return
                first = stamp if not buf else first
                buf += data
                head, sep, rest = buf.partition(b"\r\n\r\n")
                if not sep:
                    continue
                headers = dict(
                    (k.strip().lower(), v.strip()) for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])
                )
                size = int(headers.get(b"content-length", b"0"))
                if len(rest) < size:
                    continue
                buf = rest[size:]
                assert first is not None
                self.arrived[headers[b"idempotency-key"].decode()] = first
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.listener.close()


def test_the_job_is_called_before_its_trigger_is_answered(server: Server) -> None:
    """A trigger's answer goes out after its run's attempt wrote the job's call: in the kernel's
    receive stamps, each call reaches the target no later than its 201 reaches the producer (once
    the target's connection is open: the first call waits for its connect)."""
    target = StampedTarget()
    try:
        job = {"name": "called", "target": {"type": "http", "url": target.url, "allow_private": True}}
        with server.client("w-token") as c:
            c.put("/jobs/called", json=job).raise_for_status()
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        answered: dict[str, float] = {}
        with sock, server.client("w-token") as reader:
            for _ in range(21):
                sock.sendall(request(path="/api/v1/jobs/called/runs"))
                buf, first = b"", None
                while b"\r\n\r\n" not in buf or len(buf.partition(b"\r\n\r\n")[2]) < int(
                    buf.lower().partition(b"content-length:")[2].split(b"\r\n")[0] or b"0"
                ):
                    data, stamp = stamped_recv(sock)
                    assert data, "closed by the server"
                    first = stamp if first is None else first
                    buf += data
                assert buf.startswith(b"HTTP/1.1 201 ") and first is not None
                rid = json.loads(buf.partition(b"\r\n\r\n")[2])["id"]
                answered[rid] = first
                # the next trigger only once this run ended: its call's connection is back in the
                # pool, so the next call needs no connect (a connect comes before any call, answer or not)
                eventually_sync(lambda rid=rid: reader.get(f"/runs/{rid}").json()["state"] == "succeeded", 10)
        eventually_sync(lambda: len(target.arrived) >= len(answered), 10, "every call at the target")
        assert target.arrived.keys() == answered.keys()
        kept_alive = list(answered)[1:]
        late = {rid: answered[rid] - target.arrived[rid] for rid in kept_alive if target.arrived[rid] > answered[rid]}
        assert not late, f"answered before the job's call arrived (s): {late}"
    finally:
        target.close()
