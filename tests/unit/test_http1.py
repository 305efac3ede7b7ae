"""targets/http1.py against a raw server that answers in the shapes httpx used to absorb for us:
chunked and gzip bodies, HEAD answers with a Content-Length, an interim 100 Continue, a connection
closed after the answer."""

from __future__ import annotations

import asyncio
import gzip
from typing import Any

import pytest

from jobwire.targets.http1 import ClosedIdle, Http1Pool, ProtocolFailed, replayable

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
CHECKED = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
"""Not replayable: its connection is checked with `stale` before it is written on."""


async def serve(answer: bytes) -> tuple[asyncio.Server, int, list[int]]:
    """A server that answers every request with `answer`; the list counts its connections."""
    conns: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(1)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    return srv, srv.sockets[0].getsockname()[1], conns


def chunked(body: bytes, size: int = 7) -> bytes:
    parts = [
        b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size)
    ]
    return b"".join(parts) + b"0\r\n\r\n"


async def test_a_chunked_gzip_body_is_decoded_and_the_connection_reused() -> None:
    text = b"hello " * 50
    answer = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
    srv, port, conns = await serve(answer + chunked(gzip.compress(text)))
    pool = Http1Pool()
    try:
        for _ in range(3):
            r = await pool.request("127.0.0.1", port, True, REQUEST, 1 << 16)
            assert (r.status, r.body, r.complete) == (200, text, True)
        assert len(conns) == 1
    finally:
        pool.close()
        srv.close()


async def test_a_decoded_body_over_the_cap_is_cut_and_its_connection_dropped() -> None:
    text = b"x" * 100_000
    body = gzip.compress(text)
    answer = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    srv, port, _ = await serve(answer)
    pool = Http1Pool()
    try:
        r = await pool.request("127.0.0.1", port, True, REQUEST, 1000)
        assert (r.status, len(r.body), r.complete) == (200, 1000, False)
        assert pool.idle == 0
    finally:
        pool.close()
        srv.close()


async def test_a_head_answer_ends_at_its_headers() -> None:
    srv, port, _ = await serve(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
    pool = Http1Pool()
    try:
        r = await asyncio.wait_for(pool.request("127.0.0.1", port, True, REQUEST, 100, head_only=True), 5)
        assert (r.status, r.body) == (200, b"")
    finally:
        pool.close()
        srv.close()


async def test_an_interim_100_continue_is_skipped() -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
    srv, port, _ = await serve(answer)
    pool = Http1Pool()
    try:
        r = await pool.request("127.0.0.1", port, True, REQUEST, 100)
        assert (r.status, r.body) == (201, b"ok")
    finally:
        pool.close()
        srv.close()


async def test_garbage_is_a_protocol_failure() -> None:
    srv, port, _ = await serve(b"SSH-2.0-OpenSSH\r\n\r\n")
    pool = Http1Pool()
    try:
        with pytest.raises(ProtocolFailed):
            await pool.request("127.0.0.1", port, True, REQUEST, 100)
        assert pool.idle == 0
    finally:
        pool.close()
        srv.close()


async def test_a_connection_whose_descriptor_is_above_1023_is_reused() -> None:
    """select() cannot watch a descriptor ≥ FD_SETSIZE (1024): the idle check must not take such a
    connection for closed — with 1,000 calls in flight most of them are up there, and each would
    be dialled anew (and an armed call never written ahead)."""
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the hard open-file limit ({hard}) leaves no descriptor above 1023")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    filler: list[int] = []
    srv, port, conns = await serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    pool = Http1Pool()
    try:
        while not filler or filler[-1] < 1030:  # the next descriptors opened are above 1023
            filler.append(os.open(os.devnull, os.O_RDONLY))
        for _ in range(3):  # a request that is not replayable: its connection is checked (`stale`)
            r = await pool.request("127.0.0.1", port, True, CHECKED, 1 << 16)
            assert (r.status, r.body) == (200, b"ok")
        assert len(conns) == 1
    finally:
        pool.close()
        srv.close()
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_a_deadline_without_an_answer_times_out_and_drops_the_connection() -> None:
    """The deadline is a timer on the answer's future: at it, TimeoutError, and the connection
    (its answer may still come) is closed, never handed to the next call."""
    accepted: list[asyncio.StreamWriter] = []

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # reads nothing, answers nothing

    srv = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    pool = Http1Pool()
    loop = asyncio.get_running_loop()
    try:
        t0 = loop.time()
        with pytest.raises(TimeoutError):
            await pool.request("127.0.0.1", port, True, REQUEST, 100, deadline=t0 + 0.2)
        assert 0.2 <= loop.time() - t0 < 5
        assert pool.idle == 0
    finally:
        pool.close()
        for w in accepted:
            w.close()
        srv.close()


async def test_a_deadline_covers_connecting() -> None:
    never: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def dial(host: str, port: int, allow_private: bool) -> Any:
        return await never

    pool = Http1Pool(connect=dial)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(TimeoutError):
        await pool.request("127.0.0.1", 9, True, REQUEST, 100, deadline=t0 + 0.2)
    assert 0.2 <= loop.time() - t0 < 5


async def test_an_answer_in_time_leaves_no_timer_behind() -> None:
    """A call answered before its deadline keeps its connection: the timer is cancelled, so the
    deadline passing later does not close the connection it went back to the pool with."""
    srv, port, conns = await serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    pool = Http1Pool()
    loop = asyncio.get_running_loop()
    try:
        r = await pool.request("127.0.0.1", port, True, REQUEST, 100, deadline=loop.time() + 0.1)
        assert r.status == 200
        await asyncio.sleep(0.3)  # not a synchronisation: the deadline must pass with nothing happening
        assert pool.idle == 1
        r = await pool.request("127.0.0.1", port, True, REQUEST, 100, deadline=loop.time() + 5)
        assert (r.status, len(conns)) == (200, 1)
    finally:
        pool.close()
        srv.close()


# ---------------------------------------------------------------- a kept-alive connection closed unread
# The server closes a connection it kept alive just as a request is written on it (an idle timeout
# racing the write): the request was never answered, and is sent again on a new connection when it
# may be (`ClosedIdle`, `replayable`), as Go's net/http does.

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def serve_closing_the_second() -> tuple[asyncio.Server, int, list[bytes]]:
    """A server that answers the first request on each connection and closes the connection,
    unanswered, at the second; the list holds every request head it read, in order."""
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            heads.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(OK)
            await writer.drain()
            heads.append(await reader.readuntil(b"\r\n\r\n"))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    return srv, srv.sockets[0].getsockname()[1], heads


POST_KEYED = b"POST /hook HTTP/1.1\r\nHost: 127.0.0.1\r\nIdempotency-Key: r1\r\nContent-Length: 0\r\n\r\n"
POST_BARE = b"POST /hook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize("request_", [POST_KEYED, REQUEST], ids=["post-with-idempotency-key", "get"])
async def test_a_request_on_a_kept_alive_connection_closed_unanswered_is_sent_again(request_: bytes) -> None:
    srv, port, heads = await serve_closing_the_second()
    pool = Http1Pool()
    try:
        first = await pool.request("127.0.0.1", port, True, request_, 100)
        assert first.status == 200
        again = await pool.request("127.0.0.1", port, True, request_, 100)  # closed unread, then replayed
        assert (again.status, again.body) == (200, b"ok")
        assert heads == [request_] * 3, "once on the first connection, twice on the second, once on a third"
    finally:
        pool.close()
        srv.close()


async def test_a_post_without_an_idempotency_key_is_not_sent_again() -> None:
    srv, port, heads = await serve_closing_the_second()
    pool = Http1Pool()
    try:
        await pool.request("127.0.0.1", port, True, POST_BARE, 100)
        with pytest.raises(ClosedIdle):
            await pool.request("127.0.0.1", port, True, POST_BARE, 100)
        assert heads == [POST_BARE] * 2
    finally:
        pool.close()
        srv.close()


async def test_a_new_connection_closed_unanswered_is_not_taken_for_an_idle_close() -> None:
    """On a connection that never answered, a close is the server's verdict on the request (it read
    it and hung up): a failure, not a replay."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.close()

    heads: list[bytes] = []
    srv = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    pool = Http1Pool()
    try:
        with pytest.raises(ProtocolFailed) as failed:
            await pool.request("127.0.0.1", srv.sockets[0].getsockname()[1], True, POST_KEYED, 100)
        assert not isinstance(failed.value, ClosedIdle)
        assert heads == [POST_KEYED]
    finally:
        pool.close()
        srv.close()


def test_which_requests_may_be_sent_again() -> None:
    assert replayable(POST_KEYED) and replayable(POST_KEYED.replace(b"Idempotency-Key", b"idempotency-key"))
    assert replayable(REQUEST) and replayable(b"PUT /x HTTP/1.1\r\nHost: h\r\n\r\n")
    assert not replayable(POST_BARE) and not replayable(b"PATCH /x HTTP/1.1\r\nHost: h\r\n\r\n")
    assert not replayable(b"POST /x HTTP/1.1\r\nHost: h\r\n\r\nIdempotency-Key: in the body")


class _ClosingAfterOne:
    """A server in a thread (the loop does not run it, so it cannot learn of its closes): each
    connection's first request is answered, then the connection is closed at once; `heads` are
    the requests it read."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.heads: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if data:
                    self.heads.append(data)
                    conn.sendall(OK)

    def close(self) -> None:
        self.sock.close()


def _until_readable(fd: int, deadline: float) -> None:
    """Block (the loop with it) until the kernel has news on `fd`: the server's close arrived."""
    import select
    import time

    watch = select.poll()
    watch.register(fd, select.POLLIN)
    while not watch.poll(10):
        assert time.monotonic() < deadline, "the server's close never arrived"


@pytest.mark.parametrize(("request_", "replayed"), [(POST_KEYED, True), (POST_BARE, False)], ids=["keyed", "bare"])
async def test_a_connection_closed_unseen_by_the_loop_is_checked_only_for_what_cannot_go_again(
    request_: bytes, replayed: bool
) -> None:
    """A request `replayable` lets go again takes its kept-alive connection without a system call
    to ask whether it is still open (a close the loop has not read yet is `ClosedIdle`, and the
    request goes again); one that may not go again is checked first, and never written on it."""
    import time

    server = _ClosingAfterOne()
    pool = Http1Pool()
    try:
        first = await pool.request("127.0.0.1", server.port, True, request_, 100)
        assert first.status == 200
        (conn,) = pool._idle[("127.0.0.1", server.port, True)]
        written: list[bytes] = []
        write = conn.write

        def noting(waiter: asyncio.Future[Any], data: bytes) -> None:
            written.append(data)
            write(waiter, data)

        conn.write = noting  # type: ignore[method-assign]
        _until_readable(conn.fd, time.monotonic() + 5)
        assert not conn.closed, "the loop has not read the close"
        again = await pool.request("127.0.0.1", server.port, True, request_, 100)
        assert (again.status, again.body) == (200, b"ok")
        assert server.heads == [request_, request_], "read once per connection, never twice"
        assert conn.closed
        assert written == ([request_] if replayed else []), "written on the closed one only if replayable"
    finally:
        pool.close()
        server.close()
