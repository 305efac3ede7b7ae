"""The two requests every run makes — creating its Job, reading its pod's log at its end — over
`targets/http1.py`'s HTTP/1.1 client (a prepared bytes string on an asyncio transport, the answer
parsed by httptools) instead of lightkube's httpx client.

Why: with 10,000 runs in flight the httpx/httpcore path of these two requests was ~40 % of
jobwire's CPU (py-spy of `bench_kube --runs 10000`: the pool's per-request scan of its connections
and their expiry checks alone ~20 %), and a saturated event loop is what delayed the runs' status
documents. Everything else (watches, lists, deletes, templates, followed logs) stays on lightkube.

What it keeps: the server, TLS context (CA, client certificate) and credentials lightkube made from
the kubeconfig — the same `SSLContext` object and the `Authorization` value its auth flow sets.
Static credentials only (a token, a token file, basic auth): a kubeconfig with an exec plugin or an
auth provider, a proxy, or a client built over another transport (tests) keeps the httpx path for
everything (`Wire.of` returns None). A `401` is sent again through lightkube, whose token-file auth
re-reads a rotated token; the header is then taken again. Transport failures raise httpx2's
exceptions, API errors lightkube's `ApiError`, as before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from ssl import SSLContext
from typing import Any
from urllib.parse import quote

import httpx2
import msgspec
from lightkube.config.client_adapter import BearerAuth, BearerTokenFileAuth
from lightkube.core.generic_client import GenericAsyncClient

from jobwire.targets import http1

__all__ = ["AUTH_REFRESH", "Wire", "json_body", "log_lines", "segment"]

AUTH_REFRESH = 60.0
"""Seconds between two readings of the credentials' `Authorization` value (lightkube's token-file
auth itself re-reads its file only after a 401)."""

_STATIC_AUTH = (BearerAuth, BearerTokenFileAuth, httpx2.BasicAuth)


class Wire:
    """Requests to one API server (a `Kube`'s): kept-alive connections, at most as many as the
    requests `Kube` lets through at once (its slots)."""

    def __init__(self, generic: GenericAsyncClient, timeout: float, ssl: SSLContext | None) -> None:
        client: httpx2.AsyncClient = generic._client
        url = client.base_url
        self._client = client
        self._raise_for_status: Callable[[httpx2.Response], None] = generic.raise_for_status
        self._host = url.host
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._prefix = url.raw_path.rstrip(b"/")
        self._pool = http1.Http1Pool(connect=lambda host, port, _: http1.dial(host, port, ssl))
        self._head = b"host: %s\r\nuser-agent: jobwire\r\naccept: application/json\r\n" % url.netloc
        self._auth = client.auth
        self._authorization = b""
        self._auth_at = -float("inf")
        self._timeout = timeout

    @classmethod
    def of(cls, generic: GenericAsyncClient, timeout: float) -> Wire | None:
        """A Wire speaking for lightkube's client, or None when it cannot do what that client would."""
        client: httpx2.AsyncClient = generic._client
        transport = getattr(client, "_transport", None)
        if type(transport) is not httpx2.AsyncHTTPTransport or getattr(client, "_mounts", None):
            return None  # a test's transport, or a proxy
        if client.base_url.scheme not in ("http", "https"):
            return None
        # the TLS context lightkube built from the kubeconfig (CA, client certificate)
        ssl = getattr(transport._pool, "_ssl_context", None) if client.base_url.scheme == "https" else None
        if client.base_url.scheme == "https" and ssl is None:
            return None
        if client.auth is not None and not isinstance(client.auth, _STATIC_AUTH):
            return None  # an exec plugin or auth provider: its flow may run a program per request
        return cls(generic, timeout, ssl)

    def _authorization_line(self) -> bytes:
        if self._auth is None:
            return b""
        now = time.monotonic()
        if now - self._auth_at > AUTH_REFRESH:
            flow = self._auth.sync_auth_flow(httpx2.Request("GET", self._client.base_url))
            value = next(flow).headers.get("authorization")
            flow.close()
            self._authorization = b"authorization: %s\r\n" % value.encode("latin-1") if value else b""
            self._auth_at = now
        return self._authorization

    async def request(
        self, method: str, path: str, body: bytes | None, cap: int
    ) -> http1.Http1Response | None:
        """`method` `path` (below the server's URL, query included) with a JSON `body`; the answer,
        its body read up to `cap` bytes. An error answer raises lightkube's `ApiError`. None for a
        401: the caller sends it again through lightkube (whose auth flow re-reads a rotated token),
        and the header is taken again for the next request."""
        answer = await self._send(method, path, body, cap)
        if answer.status == 401:
            self._auth_at = -float("inf")
            return None
        if answer.status >= 300:
            self._raise_for_status(self._response(method, path, answer))
        return answer

    async def _send(self, method: str, path: str, body: bytes | None, cap: int) -> http1.Http1Response:
        head = b"%s %s%s HTTP/1.1\r\n" % (method.encode("ascii"), self._prefix, path.encode("ascii"))
        head += self._head + self._authorization_line()
        if body is not None:
            head += b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body)
        data = head + b"\r\n" + (body or b"")
        deadline = asyncio.get_running_loop().time() + self._timeout
        try:
            return await self._pool.request(self._host, self._port, True, data, cap, deadline=deadline)
        except TimeoutError as exc:
            raise httpx2.TimeoutException(f"{method} {path}: no answer within {self._timeout:g}s") from exc
        except http1.ConnectFailed as exc:
            raise httpx2.ConnectError(str(exc)) from exc
        except http1.ProtocolFailed as exc:
            raise httpx2.RemoteProtocolError(f"{method} {path}: {exc}") from exc

    def _response(self, method: str, path: str, answer: http1.Http1Response) -> httpx2.Response:
        """The answer as an httpx2 response (for lightkube's error mapping)."""
        url = self._client.base_url.join(path.lstrip("/"))
        # lightkube reads a Status from an answer that says it is JSON (an API error's body)
        kind = "application/json" if answer.body.lstrip()[:1] == b"{" else "text/plain"
        request = httpx2.Request(method, url)
        headers = {"content-type": kind}
        return httpx2.Response(answer.status, headers=headers, content=answer.body, request=request)

    def close(self) -> None:
        self._pool.close()


def segment(value: str) -> str:
    """One path segment (a namespace, a pod's name), escaped."""
    return quote(value, safe="")


def log_lines(body: bytes, complete: bool) -> list[str]:
    """A log's text as lightkube's `log()` yields it: each line with its newline; when the body was
    cut at the cap, its last, partial line is left out."""
    text = body.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    out = text.split("\n")
    last = out.pop()
    if last and complete:
        out.append(last)
    return [line + "\n" for line in out]


def json_body(data: dict[str, Any]) -> bytes:
    return msgspec.json.encode(data)
