"""A small synchronous client for the jobwire API (used by the CLI).

Every failure becomes a `ClientError` whose message says what went wrong and what to do:
the API's own error message and reason, or "cannot reach jobwire at URL — is `jobwire serve` running?".
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8080"
PREFIX = "/api/v1"


def default_url() -> str:
    return os.environ.get("JOBWIRE_URL") or DEFAULT_URL


def default_token() -> str | None:
    return os.environ.get("JOBWIRE_TOKEN") or os.environ.get("JOBWIRE_API_TOKEN") or None


class ClientError(Exception):
    def __init__(
        self,
        message: str,
        status: int | None = None,
        reason: str | None = None,
        details: list[dict[str, Any]] | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.reason = reason
        self.details = details or []
        self.hint = hint


@dataclass(slots=True)
class Response:
    status: int
    data: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class SSEvent:
    event: str
    id: str | None
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


_HINTS = {
    401: "pass --token or set JOBWIRE_TOKEN",
    403: "this token lacks the scope; use a token with the `write` scope",
}


class Client:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30.0) -> None:
        self.url = (url or default_url()).rstrip("/")
        headers = {"User-Agent": "jobwire-cli", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing
    def _unreachable(self, exc: Exception) -> ClientError:
        return ClientError(
            f"cannot reach jobwire at {self.url} — is `jobwire serve` running? ({type(exc).__name__})",
            hint="start it with `jobwire serve`, or point --url / JOBWIRE_URL at the server",
        )

    @staticmethod
    def _error(resp: httpx.Response) -> ClientError:
        try:
            body = resp.json()
        except ValueError:
            body = None
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            return ClientError(
                str(err.get("message") or resp.reason_phrase),
                status=resp.status_code,
                reason=str(err.get("reason") or ""),
                details=[d for d in err.get("details") or [] if isinstance(d, dict)],
                hint=_HINTS.get(resp.status_code),
            )
        return ClientError(
            f"HTTP {resp.status_code} {resp.reason_phrase} from {resp.request.url}",
            status=resp.status_code,
            hint="is --url pointing at a jobwire server?",
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | list[tuple[str, Any]] | None = None,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        try:
            resp = self._http.request(
                method,
                PREFIX + path,
                params=_clean(params),
                json=json_body,
                headers=headers,
            )
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if resp.status_code >= 400:
            raise self._error(resp)
        data: Any = None
        if resp.content:
            ctype = resp.headers.get("content-type", "")
            data = resp.json() if "json" in ctype else resp.text
        return Response(resp.status_code, data, dict(resp.headers))

    def readiness(self) -> Any:
        """`GET /readyz` (outside the API prefix): the document, also when it answers 503."""
        try:
            resp = self._http.get("/readyz")
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if resp.status_code not in (200, 503):
            raise self._error(resp)
        return resp.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params).data

    def post(self, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Response:
        return self.request("POST", path, json_body=body, headers=headers)

    # ------------------------------------------------------------------ streams
    def stream_text(self, path: str, params: dict[str, Any] | None = None) -> Iterator[str]:
        """A text/plain stream (run logs), chunk by chunk as the server sends it."""
        try:
            with self._http.stream("GET", PREFIX + path, params=_clean(params), timeout=None) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise self._error(resp)
                yield from resp.iter_text()
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    def events(self, job: str | None = None, read_timeout: float | None = None) -> Iterator[SSEvent | None]:
        """Server-Sent Events from /stream. Yields None for comment lines (the `: connected` line
        once the subscription is in place, then heartbeats), so a caller can act on those too."""
        timeout = httpx.Timeout(10.0, read=read_timeout)
        params = {"job": job} if job else None
        try:
            with self._http.stream("GET", PREFIX + "/stream", params=params, timeout=timeout) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise self._error(resp)
                event, ident, data = "message", None, list[str]()
                for line in resp.iter_lines():
                    if line == "":
                        if data:
                            yield SSEvent(event, ident, "\n".join(data))
                        event, ident, data = "message", None, []
                    elif line.startswith(":"):
                        yield None
                    else:
                        name, _, value = line.partition(":")
                        value = value.removeprefix(" ")
                        if name == "event":
                            event = value
                        elif name == "id":
                            ident = value
                        elif name == "data":
                            data.append(value)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None


def _clean(params: dict[str, Any] | list[tuple[str, Any]] | None) -> Any:
    """Drop unset query parameters; lists become repeated parameters."""
    if params is None:
        return None
    items = params.items() if isinstance(params, dict) else params
    out: list[tuple[str, Any]] = []
    for key, value in items:
        if value is None:
            continue
        if isinstance(value, list | tuple):
            out.extend((key, v) for v in value)
        elif isinstance(value, bool):
            out.append((key, "true" if value else "false"))
        else:
            out.append((key, value))
    return out
