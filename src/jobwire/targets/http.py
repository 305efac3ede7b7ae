"""The `http` target: one HTTP call per run attempt (seed 003's `callback_url` / `http_method` / `payload`).

* `Idempotency-Key: <run id>` on every request, the same for every attempt of the run (the run is
  the unit of exactly-once: a retry after a timeout whose request did land must not do the work
  twice), with `Jobwire-Attempt: <n>` beside it so a receiver can tell attempts apart.
* A strict total timeout (`target.timeout`) over resolution, connect, send and reading the
  response, on top of httpx's per-phase timeouts.
* SSRF guard (`jobwire.netguard`): unless `allow_private` (target) or `http_allow_private`
  (settings), loopback/private/link-local/... destinations are refused, checked once before the
  run is marked running and again, on the address actually dialled, at connect time.
* Redirects are not followed (a 3xx is a status like any other: it would bypass the guard).
* Proxies and credentials from the environment (HTTP_PROXY, .netrc) are not used: a job's
  request goes where its URL says, without credentials it did not ask for. Credentials in the URL
  (`https://user:pass@host/`) become `Authorization: Basic`.
* No cookies are kept: a `Set-Cookie` from one call is never sent on another (calls of different
  jobs share connections, not state).

The request goes straight to an httpx transport (`jobwire.netguard.PooledTransport`), not through
`httpx.AsyncClient`: the client's cookie jar, auth and redirect machinery are exactly what the
target does not want, and together with httpcore's pool they were most of the CPU of a call (see
`KeepAlivePool`). A call to a local keep-alive server costs 0.3–0.4 ms of CPU on the 2-core
build machine (it was 7–13 ms at 300–1,000 calls a second through the client and httpcore's pool).
"""

from __future__ import annotations

import asyncio
import base64
import importlib.metadata
import json
import resource
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import httpx
import structlog

from jobwire import loops
from jobwire.config import Settings
from jobwire.model import HttpTarget as HttpSpec
from jobwire.model import Job, RunError, RunState
from jobwire.netguard import (
    DestinationRefused,
    GuardedTransport,
    PooledTransport,
    check_destination,
    destination_checked,
)
from jobwire.params import render, render_headers, render_url
from jobwire.targets.base import Armed, Outcome, RunContext, Target
from jobwire.targets.http1 import ClosedIdle, ConnectFailed, Http1Pool, Http1Response, ProtocolFailed
from jobwire.targets.places import Places

log = structlog.get_logger(__name__)

BODY_LOG_CAP = 64 * 1024
"""At most this much of the response body is written to the run's log."""
ERROR_BODY_CHARS = 200
NO_BODY_METHODS = frozenset({"GET", "HEAD", "DELETE"})
RETRYABLE_STATUS = frozenset({408, 429})

try:
    _VERSION = importlib.metadata.version("jobwire")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    _VERSION = "0"
USER_AGENT = f"jobwire/{_VERSION}"

MAX_IN_FLIGHT = 1000
"""Requests in flight per pool (guarded / private-allowed), at most: 1,000 jobs due at one second
are called at once, not in waves of a hundred (each wave waits for the answers of the one before).
Excess attempts wait here, before they are marked running and outside their timeout; the pool has
a connection slot for every request let through, so nothing waits inside it. Fewer where the
process may not open that many files (`in_flight_limit`)."""
RESERVED_FILES = 1024
"""Open files kept for everything else (the API's connections, the store, run logs, other targets)."""
_LIMITS = httpx.Limits(
    max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT, keepalive_expiry=30
)
DEFAULT_HEADERS = (("Accept", "*/*"), ("Accept-Encoding", "gzip, deflate"), ("Connection", "keep-alive"))
"""What httpx.AsyncClient would send by default; a job's own headers replace them."""


def in_flight_limit() -> int:
    """Requests in flight per pool that this process's open-file limit allows: the soft limit is
    raised to what both pools and `RESERVED_FILES` need, where the hard limit lets it (as Go does
    for every program); a limit still too low lowers the pools' size, with a warning saying what to
    do."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * MAX_IN_FLIGHT + RESERVED_FILES
    if 0 <= soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
    if soft == resource.RLIM_INFINITY or soft >= want:
        return MAX_IN_FLIGHT
    limit = max(10, (soft - RESERVED_FILES) // 2)
    log.warning(
        "the open-file limit is low: HTTP calls in flight at once are fewer than they could be",
        open_files=soft,
        in_flight=limit,
        wanted=want,
        fix=f"raise it to {want} or more (`ulimit -n {want}`, LimitNOFILE= in a systemd unit)",
    )
    return limit


def _transport(guarded: bool) -> PooledTransport:
    return GuardedTransport(limits=_LIMITS) if guarded else PooledTransport(limits=_LIMITS)


def _basic_auth(url: httpx.URL) -> str:
    userpass = f"{url.username}:{url.password}".encode()
    return "Basic " + base64.b64encode(userpass).decode("ascii")


def status_accepted(status: int, accept: list[int | str]) -> bool:
    """`accept` holds codes (201) and classes ("2xx")."""
    for entry in accept:
        if isinstance(entry, int):
            if status == entry:
                return True
        elif entry[0] == str(status)[0]:
            return True
    return False


_FORBIDDEN_IN_HEADERS = (b"\r", b"\n", b"\0")


def _wire(request: httpx.Request) -> bytes:
    """The whole HTTP/1.1 request as httpx built it, in one string (for `Http1Pool`)."""
    head = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), request.url.raw_path)]
    for name, value in request.headers.raw:
        if any(c in name or c in value for c in _FORBIDDEN_IN_HEADERS):
            raise ValueError(f"header {name.decode('latin-1')!r} holds a line break or NUL")
        head.append(name + b": " + value)
    return b"\r\n".join(head) + b"\r\n\r\n" + request.content


def _failed(reason: str, message: str, retryable: bool, code: int | str | None = None) -> Outcome:
    return Outcome(
        state=RunState.failed, retryable=retryable, error=RunError(message=message, reason=reason, code=code)
    )


def _timed_out(seconds: float) -> Outcome:
    return Outcome(
        state=RunState.timed_out,
        error=RunError(message=f"no complete response within {seconds:g}s", reason="Timeout"),
    )


def _judge(spec: HttpSpec, status: int, head: bytes) -> Outcome:
    """The run's outcome from the answer's status (and the first bytes of its body)."""
    if status_accepted(status, spec.accept_status):
        return Outcome(state=RunState.succeeded, http_status=status)
    text = head.decode("utf-8", errors="replace")[:ERROR_BODY_CHARS]
    return Outcome(
        state=RunState.failed,
        http_status=status,
        retryable=status in RETRYABLE_STATUS or status >= 500,
        error=RunError(message=text or f"HTTP {status}", reason="HTTPStatus", code=status),
    )


_SENTINEL = "jobwire-run-id-5f0c9a7e1d3b"
"""Stands for the run id in a definition's cached request (`HttpTarget._static_wire`)."""

_Static = tuple[httpx.URL, str, int, bytes, bytes]
"""A definition's cached first-attempt request: its URL, host and port (read once: httpx's `host`
and `port` are properties that decode on every read), the request's bytes before and after the run id."""


def _build(
    spec: HttpSpec, params: dict[str, Any], run_id: str, attempt: int
) -> tuple[httpx.URL, httpx.Request]:
    """The request of one attempt. Raises ValueError, TypeError, KeyError, httpx.InvalidURL."""
    seconds = spec.timeout.total_seconds()
    url = httpx.URL(render_url(spec.url, params))
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("not an absolute http(s) URL")
    headers = httpx.Headers(DEFAULT_HEADERS)
    headers.update(render_headers(spec.headers, params))
    if url.username or url.password:
        headers["Authorization"] = _basic_auth(url)
    headers["Idempotency-Key"] = run_id
    headers["Jobwire-Attempt"] = str(attempt)
    headers["User-Agent"] = USER_AGENT
    body: Any = None
    if spec.method not in NO_BODY_METHODS and spec.payload is not None:
        body = render(spec.payload, params)
    timeouts = {"connect": seconds, "read": seconds, "write": seconds, "pool": seconds}
    request = httpx.Request(spec.method, url, headers=headers, json=body, extensions={"timeout": timeouts})
    return url, request


def _nothing() -> None:
    pass


class _Shot(Armed):
    """A plain-http first attempt made ready ahead of its due time: its request built, a place of
    the pool taken, a keep-alive connection open. `fire` writes the request; `execute` reads the
    answer (or, if the connection closed before the due time, makes the call as usual)."""

    __slots__ = ("answer", "conn", "dest", "head_only", "owner", "pool", "run_id", "slots", "waiter", "wire")

    def __init__(
        self,
        owner: dict[str, _Shot],
        run_id: str,
        pool: Http1Pool,
        dest: tuple[str, int, bool],
        conn: Any,
        wire: bytes,
        head_only: bool,
        slots: Places,
    ) -> None:
        self.owner, self.run_id, self.pool, self.dest, self.conn = owner, run_id, pool, dest, conn
        self.wire, self.head_only, self.slots = wire, head_only, slots
        self.answer: asyncio.Future[Http1Response] | None = None
        """Set by `fire`: the request is written and this is its answer."""
        self.waiter = conn.expect(BODY_LOG_CAP, head_only)
        owner[run_id] = self

    def fire(self) -> None:
        self.prime()()

    def prime(self) -> Callable[[], object]:
        """The write and nothing else: the transport's `write` of the request (no system call to
        ask whether the connection is still open, ~1.5 µs a call). A connection the loop knows
        closed gets nothing (`execute` calls as usual); one the server closed since is
        `ClosedIdle`, which `read` replays."""
        if self.conn.closed:
            return _nothing
        self.answer = self.waiter
        write: Callable[[], object] = self.conn.primed(self.waiter, self.wire)
        return write

    async def read(self, deadline: float) -> Http1Response:
        """The answer to the request `fire` wrote (TimeoutError at `deadline`, loop time); the
        connection then goes back to the pool. Written on a connection the server had just closed
        as idle: sent again on a new one (`Http1Pool.replay`; it carries an `Idempotency-Key`)."""
        assert self.answer is not None
        try:
            response: Http1Response = await self.conn.response(self.answer, deadline)
        except ClosedIdle:
            return await self.pool.replay(*self.dest, self.wire, BODY_LOG_CAP, self.head_only, deadline)
        self.pool.release(*self.dest, self.conn)
        return response

    def disarm(self) -> None:
        if self.owner.pop(self.run_id, None) is None:
            return  # taken by `execute`, or disarmed already
        if self.answer is not None:
            self.conn.close()  # its answer will not be read
        else:
            self.pool.release(*self.dest, self.conn)
        self.slots.release()


class HttpTarget(Target):
    kind = "http"
    survives_restart = False
    launch_marker = False
    """After a crash a pending run is called again with the same `Idempotency-Key` whether or not
    its call went out (this target ignores `resumed`): a journal line would change nothing."""
    launch_limit = 2 * MAX_IN_FLIGHT
    """Both pools (guarded and private-allowed) can fill; beyond that runs wait in the engine's
    launch backlog, not as tasks waiting for a slot here."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.http1 = Http1Pool()
        """Plain `http://` calls (`targets/http1.py`); `https://` goes through httpx's transport."""
        self._pools: dict[bool, tuple[PooledTransport, Places]] = {}
        """A transport and its `in_flight` slots by `allow_private`: targets allowed private
        destinations get their own, so a connection opened for them is never reused by a request
        that must be guarded, and calls of one kind never wait for the other's slots."""
        self.in_flight = MAX_IN_FLIGHT
        """Requests in flight per pool at most (`in_flight_limit`, at `start`)."""
        self._shots: dict[str, _Shot] = {}
        """Attempts armed ahead of their due time (`arm`), by run id, until `execute` takes them."""
        self._static: dict[int, tuple[HttpSpec, _Static | None]] = {}
        """By definition (its id, the definition held): its cached first-attempt request, or None."""
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop `start` ran in, for calls' deadlines (`loops.current`)."""

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.in_flight = in_flight_limit()
        # both pools now: each makes two TLS contexts (~30 ms with the CA bundle), which on a first
        # call would delay every call due in that same second
        self._pool_for(allow_private=False)
        self._pool_for(allow_private=True)

    async def close(self) -> None:
        self.http1.close()
        pools, self._pools = self._pools, {}
        for transport, _ in pools.values():
            await transport.aclose()

    def _pool_for(self, allow_private: bool) -> tuple[PooledTransport, Places]:
        pool = self._pools.get(allow_private)
        if pool is None:
            pool = (_transport(guarded=not allow_private), Places(self.in_flight))
            self._pools[allow_private] = pool
        return pool

    def _transport_for(self, allow_private: bool) -> PooledTransport:
        return self._pool_for(allow_private)[0]

    def _allows_private(self, spec: HttpSpec) -> bool:
        return spec.allow_private or self.settings.http_allow_private

    async def execute(self, ctx: RunContext) -> Outcome:
        shot = self._shots.get(ctx.run.id)
        if shot is not None and shot.answer is not None:
            del self._shots[ctx.run.id]
            try:
                return await self._fired(ctx, shot)
            finally:
                shot.slots.release()
        if shot is not None:  # its connection closed before the due time: the call is made now
            shot.disarm()
        spec = ctx.job.target
        allow_private = isinstance(spec, HttpSpec) and self._allows_private(spec)
        _, slots = self._pool_for(allow_private)
        if not slots.take():  # none free: wait in line (`Places`)
            await slots.wait()
        try:
            return await self._execute(ctx, allow_private)
        finally:
            slots.release()

    async def _fired(self, ctx: RunContext, shot: _Shot) -> Outcome:
        """The rest of an attempt whose request `shot.fire` wrote at the due time."""
        spec = ctx.job.target
        assert isinstance(spec, HttpSpec)
        await ctx.started(None)
        deadline = asyncio.get_running_loop().time() + spec.timeout.total_seconds()
        return await self._call_http1(ctx, spec, shot.read(deadline))

    async def _execute(self, ctx: RunContext, allow_private: bool) -> Outcome:
        spec = ctx.job.target
        if not isinstance(spec, HttpSpec):
            return _failed("WrongTarget", f"job {ctx.job.name} has no http target", retryable=False)
        seconds = spec.timeout.total_seconds()
        deadline = loops.current(self._loop).time() + seconds

        static = self._static_wire(spec) if ctx.run.attempt == 1 else None
        if static is not None:  # built once per definition: only the run id differs
            url, host, port, before, after = static
            request, wire = None, before + ctx.run.id.encode("ascii") + after
        else:
            try:
                url, request = _build(spec, ctx.params, ctx.run.id, ctx.run.attempt)
                wire = _wire(request) if url.scheme == "http" else b""
            except (ValueError, TypeError, KeyError, httpx.InvalidURL) as exc:
                return _failed("InvalidRequest", f"cannot build the request: {exc}", retryable=False)
            host, port = url.host, url.port or (443 if url.scheme == "https" else 80)

        try:
            if not destination_checked(host, allow_private):
                async with asyncio.timeout_at(deadline):
                    await check_destination(host, port, allow_private)
        except DestinationRefused as exc:
            log.warning("http destination refused", run_id=ctx.run.id, job=ctx.job.name, address=exc.address)
            return _failed("DestinationRefused", exc.message, retryable=False)
        except TimeoutError:
            return _timed_out(seconds)
        except OSError as exc:
            return _failed("ConnectError", f"cannot resolve {host}: {exc}", retryable=True)

        await ctx.started(None)
        await ctx.until_startable()
        if wire:
            head_only = spec.method == "HEAD"
            # every request here carries an `Idempotency-Key` (`_build`): replayable
            call = self.http1.request(
                host, port, allow_private, wire, BODY_LOG_CAP, head_only, deadline, again=True
            )
            return await self._call_http1(ctx, spec, call)
        assert request is not None
        transport = self._transport_for(allow_private)
        try:
            async with asyncio.timeout_at(deadline):
                response = await transport.handle_async_request(request)
                response.request = request
                try:
                    head = await self._read_body(response, ctx)
                finally:
                    await response.aclose()
        except (TimeoutError, httpx.TimeoutException):
            log.info("http call timed out", run_id=ctx.run.id, job=ctx.job.name)
            return _timed_out(seconds)
        except DestinationRefused as exc:  # the name resolved differently at connect time
            return _failed("DestinationRefused", exc.message, retryable=False)
        except httpx.ConnectError as exc:
            return _failed("ConnectError", f"cannot connect to {host}:{port}: {exc}", retryable=True)
        except httpx.TransportError as exc:
            return _failed("NetworkError", f"{type(exc).__name__}: {exc}", retryable=True)

        return _judge(spec, response.status_code, head)

    async def arm(self, ctx: RunContext) -> Armed | None:
        """A plain-http first attempt whose request needs no parameters (`_static_wire`): checked,
        connected and built ahead, so that at the due time its start is one write (`_Shot`)."""
        spec = ctx.job.target
        if not isinstance(spec, HttpSpec) or ctx.run.attempt != 1:
            return None
        static = self._static_wire(spec)
        allow_private = self._allows_private(spec)
        _, slots = self._pool_for(allow_private)
        if static is None or slots.locked():
            return None
        _, host, port, before, after = static
        dest = (host, port, allow_private)
        await slots.acquire()  # not locked: no wait
        try:
            await check_destination(*dest)
            conn = await self.http1.acquire(*dest)
        except Exception:  # refused, unresolvable, no connection: `execute` reports it at the due time
            slots.release()
            return None
        except BaseException:
            slots.release()
            raise
        wire = before + ctx.run.id.encode("ascii") + after
        return _Shot(self._shots, ctx.run.id, self.http1, dest, conn, wire, spec.method == "HEAD", slots)

    def prepare(self, job: Job) -> None:
        """Build a plain-http job's request ahead of its fire (`_static_wire`: once per definition)."""
        spec = job.target
        if isinstance(spec, HttpSpec):
            self._static_wire(spec)

    def _static_wire(self, spec: HttpSpec) -> _Static | None:
        """For a plain-http definition without placeholders: its first attempt's request, split
        where the run id goes (None when it has placeholders or cannot be built: the slow path
        builds it, or fails it, per run)."""
        cached = self._static.get(id(spec))
        if cached is not None and cached[0] is spec:  # the spec is held: its id is not reused
            return cached[1]
        built: _Static | None = None
        try:
            text = spec.url + json.dumps(spec.headers) + json.dumps(spec.payload)
            if "{{" not in text and _SENTINEL not in text:
                url, request = _build(spec, {}, _SENTINEL, 1)
                if url.scheme == "http":
                    before, _, after = _wire(request).partition(_SENTINEL.encode())
                    if after and _SENTINEL.encode() not in after:
                        built = (url, url.host, url.port or 80, before, after)
        except (ValueError, TypeError, KeyError, httpx.InvalidURL):
            built = None
        if len(self._static) >= 10_000:
            self._static.clear()
        self._static[id(spec)] = (spec, built)
        return built

    @staticmethod
    async def _call_http1(ctx: RunContext, spec: HttpSpec, call: Awaitable[Http1Response]) -> Outcome:
        """A plain-http call's outcome: `call` (the pool's request, or an armed attempt's answer,
        each given the attempt's deadline: TimeoutError after it), its body logged, its status judged."""
        seconds = spec.timeout.total_seconds()
        try:
            response = await call
        except TimeoutError:
            log.info("http call timed out", run_id=ctx.run.id, job=ctx.job.name)
            return _timed_out(seconds)
        except DestinationRefused as exc:  # the name resolved differently at connect time
            return _failed("DestinationRefused", exc.message, retryable=False)
        except ConnectFailed as exc:
            return _failed("ConnectError", str(exc), retryable=True)
        except (ProtocolFailed, OSError) as exc:
            return _failed("NetworkError", f"{type(exc).__name__}: {exc}", retryable=True)
        if response.body:
            ctx.log(response.body)
        return _judge(spec, response.status, response.body[: 4 * ERROR_BODY_CHARS])

    @staticmethod
    async def _read_body(response: httpx.Response, ctx: RunContext) -> bytes:
        """Log up to BODY_LOG_CAP bytes of the body; return the first ones (for the error message)."""
        kept = 0
        head = b""
        async for chunk in response.aiter_bytes():
            piece = chunk[: BODY_LOG_CAP - kept]
            if piece:
                ctx.log(piece)
                kept += len(piece)
                if len(head) < 4 * ERROR_BODY_CHARS:
                    head += piece[: 4 * ERROR_BODY_CHARS - len(head)]
            if kept >= BODY_LOG_CAP:
                break  # the rest is not read: closing the response drops the connection
        return head
