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
  request goes where its URL says, without credentials it did not ask for.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from typing import Any

import httpx
import structlog

from jobwire.config import Settings
from jobwire.model import HttpTarget as HttpSpec
from jobwire.model import RunError, RunState
from jobwire.netguard import DestinationRefused, GuardedTransport, check_destination
from jobwire.params import render, render_headers, render_url
from jobwire.targets.base import Outcome, RunContext, Target

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

MAX_IN_FLIGHT = 100
"""Requests in flight per target instance. httpcore assigns queued requests to connections in
time quadratic in the queue (encode/httpcore#1035): at 1,000 in flight that ate 97% of the engine's
CPU, so excess attempts wait here, outside their timeout, instead of in the pool."""
_LIMITS = httpx.Limits(
    max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT, keepalive_expiry=30
)


def _client(guarded: bool) -> httpx.AsyncClient:
    transport = (
        GuardedTransport(limits=_LIMITS)
        if guarded
        else httpx.AsyncHTTPTransport(trust_env=False, limits=_LIMITS)
    )
    return httpx.AsyncClient(transport=transport, follow_redirects=False, trust_env=False)


def status_accepted(status: int, accept: list[int | str]) -> bool:
    """`accept` holds codes (201) and classes ("2xx")."""
    for entry in accept:
        if isinstance(entry, int):
            if status == entry:
                return True
        elif entry[0] == str(status)[0]:
            return True
    return False


def _failed(reason: str, message: str, retryable: bool, code: int | str | None = None) -> Outcome:
    return Outcome(
        state=RunState.failed, retryable=retryable, error=RunError(message=message, reason=reason, code=code)
    )


def _timed_out(seconds: float) -> Outcome:
    return Outcome(
        state=RunState.timed_out,
        error=RunError(message=f"no complete response within {seconds:g}s", reason="Timeout"),
    )


class HttpTarget(Target):
    kind = "http"
    survives_restart = False

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._guarded: httpx.AsyncClient | None = None
        self._in_flight: asyncio.Semaphore | None = None
        self._open: httpx.AsyncClient | None = None
        """For targets allowed private destinations: a separate pool, so a connection opened for
        them is never reused by a request that must be guarded."""

    async def start(self) -> None:
        if self._guarded is None:
            self._guarded = _client(guarded=True)

    async def close(self) -> None:
        for client in (self._guarded, self._open):
            if client is not None:
                await client.aclose()
        self._guarded = self._open = None

    def _client_for(self, allow_private: bool) -> httpx.AsyncClient:
        if allow_private:
            if self._open is None:
                self._open = _client(guarded=False)
            return self._open
        if self._guarded is None:
            self._guarded = _client(guarded=True)
        return self._guarded

    async def execute(self, ctx: RunContext) -> Outcome:
        if self._in_flight is None:
            self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        async with self._in_flight:
            return await self._execute(ctx)

    async def _execute(self, ctx: RunContext) -> Outcome:
        spec = ctx.job.target
        if not isinstance(spec, HttpSpec):
            return _failed("WrongTarget", f"job {ctx.job.name} has no http target", retryable=False)
        allow_private = spec.allow_private or self.settings.http_allow_private
        seconds = spec.timeout.total_seconds()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds

        try:
            url = httpx.URL(render_url(spec.url, ctx.params))
            if url.scheme not in ("http", "https") or not url.host:
                raise ValueError("not an absolute http(s) URL")
            headers = render_headers(spec.headers, ctx.params)
            body: Any = None
            if spec.method not in NO_BODY_METHODS and spec.payload is not None:
                body = render(spec.payload, ctx.params)
        except (ValueError, TypeError, KeyError, httpx.InvalidURL) as exc:
            return _failed("InvalidRequest", f"cannot build the request: {exc}", retryable=False)
        headers["Idempotency-Key"] = ctx.run.id
        headers["Jobwire-Attempt"] = str(ctx.run.attempt)
        headers["User-Agent"] = USER_AGENT
        port = url.port or (443 if url.scheme == "https" else 80)

        try:
            async with asyncio.timeout_at(deadline):
                await check_destination(url.host, port, allow_private)
        except DestinationRefused as exc:
            log.warning("http destination refused", run_id=ctx.run.id, job=ctx.job.name, address=exc.address)
            return _failed("DestinationRefused", exc.message, retryable=False)
        except TimeoutError:
            return _timed_out(seconds)
        except OSError as exc:
            return _failed("ConnectError", f"cannot resolve {url.host}: {exc}", retryable=True)

        await ctx.started(None)
        client = self._client_for(allow_private)
        request = client.build_request(
            spec.method,
            url,
            headers=headers,
            json=body,
            timeout=httpx.Timeout(seconds),
        )
        try:
            async with asyncio.timeout_at(deadline):
                response = await client.send(request, stream=True)
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
            return _failed("ConnectError", f"cannot connect to {url.host}:{port}: {exc}", retryable=True)
        except httpx.TransportError as exc:
            return _failed("NetworkError", f"{type(exc).__name__}: {exc}", retryable=True)

        status = response.status_code
        log.info("http call finished", run_id=ctx.run.id, job=ctx.job.name, status=status)
        if status_accepted(status, spec.accept_status):
            return Outcome(state=RunState.succeeded, http_status=status)
        text = head.decode("utf-8", errors="replace")[:ERROR_BODY_CHARS]
        return Outcome(
            state=RunState.failed,
            http_status=status,
            retryable=status in RETRYABLE_STATUS or status >= 500,
            error=RunError(message=text or f"HTTP {status}", reason="HTTPStatus", code=status),
        )

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
