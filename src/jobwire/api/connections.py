"""Connection hygiene for `jobwire serve`: deadlines for slow or idle clients and a cap on open
connections, as a subclass of uvicorn's HTTP protocol (`uvicorn.Config(http=...)`).

uvicorn closes a connection that is idle *after* a response (`timeout_keep_alive`), but not one
that never finishes its request head or stops sending its body: each such connection holds a file
descriptor for ever, and enough of them exhaust the process's descriptors (the API then stops
accepting anything). Here every connection has one lazily re-armed timer:

* **head deadline** — from the moment a connection opens (or its previous response ends) it has
  `header_timeout` to deliver a complete request head; a byte now and then does not extend it;
* **body stall** — while a request body is still arriving, `header_timeout` without a byte closes
  it (not counted while uvicorn itself has paused reading);
* **keep-alive** — after an answer the raw front wrote (`rawfront.py`, `answered`), uvicorn's
  `timeout_keep_alive` closes an idle connection on this same timer, not on one of uvicorn's own
  made and cancelled per request;
* **cap** — at most `max_connections` are open. A new connection over the cap takes the place of
  the oldest connection that is waiting for a request head (idle keep-alive or half-sent), so
  clients that hold connections without sending cannot lock others out; when every connection is
  busy with a request, the new one is answered 503 and closed at once.

Closures are logged as one summary line at most every `LOG_EVERY` seconds, not one per connection.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections import Counter
from typing import Any

import structlog

log = structlog.get_logger("jobwire.connections")

LOG_EVERY = 10.0
"""Seconds between two summary log lines about closed or refused connections."""
FD_RESERVE = 256
"""Descriptors kept free of connections: the store, run logs, child pipes, outgoing requests."""
DEFAULT_CAP = 8192

ABORT_KEY = "jobwire.abort_connection"
"""Key of `scope["state"]` holding a callable that aborts the request's connection (the stream
uses it to drop a client that stopped reading)."""

_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 33\r\nretry-after: 1\r\nconnection: close\r\n\r\ntoo many open connections, retry\n"
)


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard one; return the (new) soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # pragma: no cover - a platform that refuses
            pass
    return int(soft) if soft != resource.RLIM_INFINITY else 1 << 20


def connection_cap(setting: int | None, fd_limit: int) -> int:
    """The connection cap: the setting, else half the descriptors (at most DEFAULT_CAP); never
    so high that connections could take the descriptors the rest of the process needs."""
    ceiling = max(16, fd_limit - FD_RESERVE)
    if setting is None:
        return max(16, min(DEFAULT_CAP, fd_limit // 2))
    if setting > ceiling:
        log.warning(
            "JOBWIRE_MAX_CONNECTIONS is above what the open-file limit allows; using the lower value",
            max_connections=setting,
            open_file_limit=fd_limit,
            used=ceiling,
        )
        return ceiling
    return setting


class ConnectionLog:
    """Counts closures by reason; logs them as one warning line at most every `every` seconds
    (what happens in between is summed into the next line, written when the interval ends)."""

    def __init__(self, every: float = LOG_EVERY) -> None:
        self.every = every
        self.counts: Counter[str] = Counter()
        self.totals: Counter[str] = Counter()
        self._last = -float("inf")
        self._pending: asyncio.TimerHandle | None = None

    def note(self, reason: str) -> None:
        self.counts[reason] += 1
        self.totals[reason] += 1
        if self._pending is not None:
            return
        wait = self._last + self.every - time.monotonic()
        if wait <= 0:
            self.flush()
        else:
            self._pending = asyncio.get_running_loop().call_later(wait, self.flush)

    def flush(self) -> None:
        self._pending = None
        if self.counts:
            self._last = time.monotonic()
            counts, self.counts = dict(self.counts), Counter()
            log.warning("connections closed or refused", reasons=counts, at_most_every_s=self.every)


class Guard:
    """Shared state of every connection of one server: open connections oldest first, the
    settings, and the closure log."""

    def __init__(self, max_connections: int, header_timeout: float) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.open: dict[Any, None] = {}
        """Open connections in the order they opened (a dict keeps insertion order)."""
        self.log = ConnectionLog()

    def admit(self, conn: Any) -> bool:
        """Register a new connection; False if it must be refused. Over the cap, the oldest
        connection waiting for a request head is closed to make room."""
        if len(self.open) >= self.max_connections:
            victim = next((c for c in self.open if c.waiting_for_head()), None)
            if victim is None:
                self.log.note("over the connection cap, all busy: refused with 503")
                return False
            self.open.pop(victim, None)
            victim.transport.close()
            self.log.note("over the connection cap: closed the oldest idle or half-sent connection")
        self.open[conn] = None
        return True

    def forget(self, conn: Any) -> None:
        self.open.pop(conn, None)


def guarded_protocol(guard: Guard, base: type[asyncio.Protocol] | None = None) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class (httptools or h11, as uvicorn would pick) with deadlines and
    the connection cap of `guard`. Both uvicorn protocols share the attributes used here:
    `transport`, `flow`, `cycle` (None before the first head; `response_complete`, `more_body`),
    `app_state` and `on_response_complete()`."""
    if base is None:
        from uvicorn.protocols.http.auto import AutoHTTPProtocol

        base = AutoHTTPProtocol
    parent: Any = base

    class GuardedProtocol(parent):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # each request's scope["state"] is a copy of app_state: give this connection's its abort
            state: dict[str, Any] = getattr(self, "app_state", {})
            self.app_state = {**state, ABORT_KEY: self._abort}
            self._timer: asyncio.TimerHandle | None = None
            self._timer_at = 0.0
            self._answering = False
            """A request is being answered outside uvicorn's cycle (`rawfront.py`): no deadline."""
            self._head_deadline = 0.0
            self._last_data = 0.0
            self._admitted = False
            self._idle_until = 0.0
            """After an answer written outside uvicorn's cycle (`answered`): uvicorn's keep-alive
            deadline, kept by this timer; 0 once a byte came after it (as uvicorn's timer is
            cancelled by any data)."""

        # ---- state
        def waiting_for_head(self) -> bool:
            if self._answering:
                return False
            cycle = self.cycle
            return cycle is None or bool(cycle.response_complete)

        def _receiving_body(self) -> bool:
            cycle = self.cycle
            return (
                cycle is not None
                and not cycle.response_complete
                and bool(cycle.more_body)
                and not self.flow.read_paused
            )

        # ---- timer
        def _arm(self, at: float) -> None:
            """Make sure `_check` runs by `at`. A timer due first is kept: `_check` looks at the
            deadlines as they are then and sets itself again (a new timer per request was ~1.7 %
            of the loop with 16 clients on keep-alive)."""
            if self._timer is not None:
                if self._timer_at <= at:
                    return
                self._timer.cancel()
            self._timer = self.loop.call_at(at, self._check)
            self._timer_at = at

        def _check(self) -> None:
            self._timer = None
            if self.transport is None or self.transport.is_closing():
                return
            now = self.loop.time()
            if self._answering:  # `disarm`: no deadline until the answer is out; look again later
                self._arm(now + guard.header_timeout)
            elif self.waiting_for_head():
                idle = self._idle_until
                if idle and now >= idle:  # uvicorn's keep-alive timeout: closed, not aborted
                    self.transport.close()
                elif now >= self._head_deadline:  # first when the header timeout is the shorter
                    guard.log.note("no complete request head within JOBWIRE_HEADER_TIMEOUT")
                    self._abort()
                else:
                    self._arm(min(idle, self._head_deadline) if idle else self._head_deadline)
            elif self._receiving_body():
                stalled_at = self._last_data + guard.header_timeout
                if now >= stalled_at:
                    guard.log.note("request body stalled longer than JOBWIRE_HEADER_TIMEOUT")
                    self._abort()
                else:
                    self._arm(stalled_at)
            elif bool(self.cycle.more_body):
                # reading paused by uvicorn (the app has not read the body yet): look again later
                self._last_data = now
                self._arm(now + guard.header_timeout)
            # otherwise the app is handling the request: re-armed when its response ends

        def disarm(self) -> None:
            """No deadline until the response in progress ends (`on_response_complete` re-arms):
            for a request answered outside uvicorn's cycle (`rawfront.py`). The timer is left to
            run: `_check` sees the answer in progress and looks again later."""
            self._answering = True

        def _abort(self) -> None:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.abort()

        # ---- protocol events
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if not guard.admit(self):
                transport.write(_REFUSED)
                transport.close()
                return
            self._admitted = True
            now = self.loop.time()
            self._head_deadline = self._last_data = now
            self._head_deadline += guard.header_timeout
            self._arm(self._head_deadline)

        def data_received(self, data: bytes) -> None:
            if not self._admitted:
                return
            self._idle_until = 0.0
            self._last_data = self.loop.time()
            super().data_received(data)
            if self._timer is None and not self.transport.is_closing() and self._receiving_body():
                self._arm(self._last_data + guard.header_timeout)

        def answered(self) -> None:
            """`on_response_complete` for an answer written outside uvicorn's cycle (`rawfront.py`),
            where uvicorn's parser, pipeline and flow control never ran: its request count, and its
            keep-alive timeout kept by this connection's timer (`_check`) rather than by a timer
            made after each answer and cancelled by the next request (uvicorn's `call_later`:
            ~1.7 µs a request)."""
            self._answering = False
            self.server_state.total_requests += 1
            if self._admitted and not self.transport.is_closing():
                now = self.loop.time()
                self._idle_until = now + self.timeout_keep_alive
                self._head_deadline = now + guard.header_timeout
                self._arm(self._idle_until)

        def on_response_complete(self) -> None:
            self._answering = False
            super().on_response_complete()
            if self._admitted and not self.transport.is_closing():
                self._head_deadline = self.loop.time() + guard.header_timeout
                self._arm(self._head_deadline)

        def connection_lost(self, exc: Exception | None) -> None:
            guard.forget(self)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            super().connection_lost(exc)

    return GuardedProtocol


def uvicorn_options(
    max_connections: int | None, header_timeout: float, keepalive_timeout: float
) -> dict[str, Any]:
    """The `uvicorn.Config` arguments for `jobwire serve`: the guarded protocol and the keep-alive
    timeout. Raises the open-file limit first, so the cap can be sized from it."""
    fd_limit = raise_fd_limit()
    cap = connection_cap(max_connections, fd_limit)
    guard = Guard(cap, header_timeout)
    log.debug("connection limits", max_connections=cap, open_file_limit=fd_limit, header_s=header_timeout)
    return {
        "http": guarded_protocol(guard),
        "timeout_keep_alive": max(1, round(keepalive_timeout)),
    }
