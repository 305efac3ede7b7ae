"""A minimal HTTP/1.1 client for the `http` target's plain `http://` calls.

Why: a call through httpx's transport and httpcore (h11's state machine, anyio streams, the
connection's locks and expiry checks) cost ~0.3 ms of CPU, the largest share of a finished HTTP run
(py-spy on `jobwire serve` at 16 producers: ~45 % of the event loop's samples were inside the
target, two thirds of them in httpcore). Here a request is one prepared bytes string written on an
asyncio transport, and the response is parsed by httptools (the C parser uvicorn uses), on the
protocol's callbacks: no stream objects, no locks, no per-call task.

What it keeps from the httpx path: the request bytes as `httpx.Request` builds them (URL, Host,
JSON body, headers — built by the caller); the guard (`netguard.resolve_destination` resolves and
checks at connect time, and only checked addresses are dialled); keep-alive connections reused
last-in first-out, dropped after `KEEPALIVE_EXPIRY` idle or when the server closes them; a response
body read up to the log cap, decoded from gzip/deflate like httpx does, and a connection whose
body was not read to its end (over the cap, a timeout, a cancel) closed, never reused. `https://`
calls keep going through httpx (TLS).

A call's deadline (loop time) is a timer on its answer's future, which fails it with TimeoutError
and closes the connection: no `asyncio.timeout` context (a Timeout object, the current task's
cancel and uncancel) per call. Only dialling a new connection runs under `asyncio.timeout_at`.
"""

from __future__ import annotations

import asyncio
import select
import socket
import time
import zlib
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from ssl import SSLContext
from typing import Any

import httptools

from jobwire.netguard import resolve_destination

KEEPALIVE_EXPIRY = 30.0
"""Seconds an idle connection is kept for reuse."""


class ConnectFailed(Exception):
    """The name did not resolve or no address accepted the connection (another attempt may help)."""


class ProtocolFailed(Exception):
    """The connection closed or the server answered something that is not HTTP/1.1."""


class ClosedIdle(ProtocolFailed):
    """A kept-alive connection (one that had answered before) ended before a byte of the answer to
    the request just written on it: the server had closed it as idle, so it never read the request,
    and the request may be sent again on a new connection (`Http1Pool.replay`). Go's `net/http`
    replays such a request too when it carries an `Idempotency-Key`, as this target's always do."""


class Http1Response:
    __slots__ = ("body", "complete", "status")

    def __init__(self, status: int, body: bytes, complete: bool) -> None:
        self.status = status
        self.body = body
        """The decoded body, at most the caller's cap."""
        self.complete = complete
        """False when the body was longer than the cap (its rest was not read)."""


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: Any = None
        """An asyncio.Transport (uvloop's is not a subclass of it)."""
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Http1Response] | None = None
        self.cap = 0
        self.head_only = False
        self.status = 0
        self.encoding = b""
        self.decoder: Any = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.idle_since = 0.0
        self.closed = False
        self.fd = -1
        self.answered = 0
        """Answers read whole on this connection: above 0 it is a kept-alive one."""
        self.heard = False
        """A byte came after the request in flight was written."""

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.fd = sock.fileno()

    def stale(self) -> bool:
        """An idle connection the server closed (or wrote to) whose news the loop has not read yet:
        readable while idle means EOF or garbage, never something to send a request on."""
        if self.closed or self.fd < 0:
            return True
        watch = select.poll()  # not select(): it refuses a descriptor ≥ 1024, and 1,000 in flight go there
        watch.register(self.fd, select.POLLIN)
        try:
            return bool(watch.poll(0))
        except OSError:
            return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        why = f"the server closed the connection{f': {exc}' if exc else ''}"
        self._fail(ClosedIdle(why) if self.answered and not self.heard else ProtocolFailed(why))

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # nothing asked: a server talking out of turn is not reused
            self.close()
            return
        self.heard = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ProtocolFailed("the server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(ProtocolFailed(f"not an HTTP/1.1 response: {exc}"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.chunks, self.size, self.encoding, self.decoder = [], 0, b"", None

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-encoding":
            self.encoding = value.strip().lower()

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.encoding == b"gzip":
            self.decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif self.encoding == b"deflate":
            self.decoder = zlib.decompressobj()
        if self.head_only and self.status >= 200:
            self._done(complete=True, reusable=False)  # a HEAD answer has no body, whatever it says

    def on_body(self, data: bytes) -> None:
        room = self.cap - self.size
        if self.decoder is not None:
            try:
                data = self.decoder.decompress(data, room + 1)
            except zlib.error as exc:
                self._fail(ProtocolFailed(f"cannot decode the {self.encoding.decode()} body: {exc}"))
                return
        if len(data) > room:
            self.chunks.append(data[:room])
            self.size = self.cap
            self._done(complete=False, reusable=False)
            return
        if data:
            self.chunks.append(data)
            self.size += len(data)

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:  # an interim answer (100 Continue): the real one follows
            return
        self._done(complete=True, reusable=self.parser.should_keep_alive())

    # the call
    def _done(self, complete: bool, reusable: bool) -> None:
        waiter, self.waiter = self.waiter, None
        self.answered += 1
        if not reusable:
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result(Http1Response(self.status, b"".join(self.chunks), complete))

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _expire(self) -> None:
        self._fail(TimeoutError("no answer before the call's deadline"))

    def call(
        self, request: bytes, cap: int, head_only: bool, deadline: float | None = None
    ) -> Coroutine[Any, Any, Http1Response]:
        """Write `request` now; the coroutine returned reads its answer (`send`, then `response`:
        no coroutine of its own in between)."""
        return self.response(self.send(request, cap, head_only), deadline)

    def send(self, request: bytes, cap: int, head_only: bool) -> asyncio.Future[Http1Response]:
        """Write `request`; its answer is `response(<the future returned>)`'s."""
        waiter = self.expect(cap, head_only)
        self.write(waiter, request)
        return waiter

    def expect(self, cap: int, head_only: bool) -> asyncio.Future[Http1Response]:
        """Ready for a request `write` will send (ahead of it: `write` is then all a call's start
        costs): the future of its answer."""
        assert self.transport is not None and self.waiter is None
        self.cap, self.head_only, self.status, self.heard = cap, head_only, 0, False
        return self.loop.create_future()

    def write(self, waiter: asyncio.Future[Http1Response], request: bytes) -> None:
        """Send `request`, whose answer `waiter` (from `expect`) will be."""
        self.waiter = waiter
        self.transport.write(request)

    def primed(self, waiter: asyncio.Future[Http1Response], request: bytes) -> Callable[[], object]:
        """`write`, split: `waiter` is the answer's from now on, and the call returned sends
        `request` (the transport's own `write`, nothing between). Nothing may read from this
        connection until that call is made."""
        self.waiter = waiter
        return partial(self.transport.write, request)

    async def response(
        self, waiter: asyncio.Future[Http1Response], deadline: float | None = None
    ) -> Http1Response:
        """The answer to the request `send` wrote (it may have come already). At `deadline`
        (loop time) without one: TimeoutError, and the connection is closed."""
        timer = None if deadline is None else self.loop.call_at(deadline, self._expire)
        try:
            return await waiter
        except BaseException:
            self.close()  # a cancelled or timed-out call leaves its connection in an unknown state
            raise
        finally:
            if timer is not None:
                timer.cancel()


async def dial(host: str, port: int, ssl: SSLContext | None) -> _Conn:
    """A connection to a server the configuration names (no destination guard: the Kubernetes
    API), over TLS with `ssl`. Raises ConnectFailed."""
    try:
        _, conn = await asyncio.get_running_loop().create_connection(
            _Conn, host, port, ssl=ssl, server_hostname=host if ssl is not None else None
        )
    except OSError as exc:  # ssl.SSLError is one: a certificate the context does not trust
        raise ConnectFailed(f"cannot connect to {host}:{port}: {exc}") from exc
    return conn


IDEMPOTENT = frozenset((b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"))


def replayable(request: bytes) -> bool:
    """Whether `request` may be sent again after `ClosedIdle` (as Go's `net/http` decides): an
    idempotent method, or an `Idempotency-Key` header."""
    head = request[: request.find(b"\r\n\r\n")]
    return head[: head.find(b" ")] in IDEMPOTENT or b"\r\nidempotency-key:" in head.lower()


class Http1Pool:
    """Keep-alive connections by (host, port, allow_private): a connection opened for a target
    allowed private destinations is never reused by one that must be guarded. `connect` replaces
    the guarded plain-http dialling (`dial`, for a server the configuration names)."""

    def __init__(self, connect: Callable[[str, int, bool], Awaitable[_Conn]] | None = None) -> None:
        self._idle: dict[tuple[str, int, bool], list[_Conn]] = {}
        self._dial = connect or self._connect

    @property
    def idle(self) -> int:
        return sum(1 for conns in self._idle.values() for c in conns if not c.closed)

    async def request(
        self,
        host: str,
        port: int,
        allow_private: bool,
        request: bytes,
        cap: int,
        head_only: bool = False,
        deadline: float | None = None,
        again: bool | None = None,
    ) -> Http1Response:
        """Send `request` (the whole HTTP/1.1 request) and read the answer, its body up to `cap`
        bytes. Raises DestinationRefused, ConnectFailed, ProtocolFailed, and TimeoutError when
        `deadline` (loop time) passes first — connecting included. `again`: whether the
        request may be sent again, if known (None: `replayable` tells)."""
        if again is None:
            again = replayable(request)
        # `acquire` written out: no coroutine of its own for a connection kept alive
        conn = self._checkout((host, port, allow_private), not again) or await self._dial_by(
            host, port, allow_private, deadline
        )
        try:
            response = await conn.call(request, cap, head_only, deadline)
        except ClosedIdle:
            if not again:
                raise
            return await self.replay(host, port, allow_private, request, cap, head_only, deadline)
        self.release(host, port, allow_private, conn)
        return response

    async def replay(
        self,
        host: str,
        port: int,
        allow_private: bool,
        request: bytes,
        cap: int,
        head_only: bool = False,
        deadline: float | None = None,
    ) -> Http1Response:
        """`request` again, once, on a new connection: the kept-alive one it was written on closed
        unread (`ClosedIdle`). Raises as `request` does."""
        async with asyncio.timeout_at(deadline):
            conn = await self._dial(host, port, allow_private)
        response = await conn.call(request, cap, head_only, deadline)
        self.release(host, port, allow_private, conn)
        return response

    async def acquire(
        self, host: str, port: int, allow_private: bool, deadline: float | None = None, check: bool = True
    ) -> _Conn:
        """An idle keep-alive connection to (host, port), or a new one dialled before `deadline`
        (loop time; None: no limit). Raises DestinationRefused, ConnectFailed, TimeoutError. Give
        it back with `release` once its answer is read. `check`: as `_checkout`."""
        conn = self._checkout((host, port, allow_private), check)
        if conn is not None:
            return conn
        return await self._dial_by(host, port, allow_private, deadline)

    async def _dial_by(self, host: str, port: int, allow_private: bool, deadline: float | None) -> _Conn:
        """A new connection to (host, port), dialled before `deadline` (loop time; None: no limit)."""
        async with asyncio.timeout_at(deadline):
            return await self._dial(host, port, allow_private)

    def release(self, host: str, port: int, allow_private: bool, conn: _Conn) -> None:
        """`conn` is free again (kept for reuse unless it is closed)."""
        if not conn.closed:
            conn.idle_since = time.monotonic()
            self._idle.setdefault((host, port, allow_private), []).append(conn)

    def _checkout(self, key: tuple[str, int, bool], check: bool = True) -> _Conn | None:
        """The most recently used idle connection to `key` that is not known closed; `check`: and
        that the kernel has no news for either (`stale`, a system call: not needed for a request
        that `replayable` lets go again if the connection turns out closed)."""
        conns = self._idle.get(key)
        if not conns:
            return None
        expired = time.monotonic() - KEEPALIVE_EXPIRY
        while conns and (conns[0].closed or conns[0].idle_since < expired):
            conns.pop(0).close()
        while conns:
            conn = conns.pop()
            if conn.closed:
                continue
            if not check or not conn.stale():
                return conn
            conn.close()
        return None

    @staticmethod
    async def _connect(host: str, port: int, allow_private: bool) -> _Conn:
        try:
            addresses = await resolve_destination(host, port, allow_private)
        except socket.gaierror as exc:
            raise ConnectFailed(f"cannot resolve {host}: {exc}") from exc
        loop = asyncio.get_running_loop()
        last: OSError | None = None
        for ip in addresses:  # only checked addresses are dialled
            try:
                _, conn = await loop.create_connection(_Conn, ip, port)
                return conn
            except OSError as exc:
                last = exc
        raise ConnectFailed(f"cannot connect to {host}:{port}: {last}")

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
