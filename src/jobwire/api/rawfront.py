"""The trigger answered on the connection itself, in front of uvicorn's HTTP machinery.

Why: `POST /api/v1/jobs/{name}/runs` is the request producers send thousands of times a second.
`fastpath.TriggerFastPath` already answers it in front of FastAPI, but behind uvicorn's protocol
(a request-cycle object, an ASGI scope, its task) and five ASGI middleware layers, and uvicorn
writes each answer in two socket writes (head, then body). py-spy on `jobwire serve` at 16
producers: those layers and the second write were ~15 % of the event loop per HTTP run.

Here the connection's protocol (uvicorn's, with `connections.guarded_protocol`'s deadlines and
cap) first looks at each request itself. A request it recognises — `POST /api/v1/jobs/<name>/runs`,
HTTP/1.1, a plain job name, a `Content-Length` body (JSON or none) within the body limit, no
`Transfer-Encoding`, `Expect` or `Upgrade` — is answered by `fastpath.answer` (the same engine
call, authentication, masking and JSON as the route) and written in one piece. Anything else, or
anything it is unsure of, hands the connection to uvicorn **for good**, with every byte not yet
answered: uvicorn's parser then starts at a request boundary, as if it had read the connection
from the start. So the dashboard, the other endpoints, oversized or chunked bodies, malformed
requests (uvicorn answers its 400) and the route's own validation (422s) are exactly as before.

Between requests the connection keeps uvicorn's and the guard's bookkeeping: each answer ends
with the guard's `answered` (uvicorn's request count; its keep-alive timeout and the next head
deadline, both on the guard's one timer per connection); while an answer is being made no
deadline runs (as for uvicorn while its app works), and a graceful shutdown closes the connection
after the answer in progress. The answer is written by a callback queued after the commit, behind
the first step of the run's attempt, so the job's call leaves before the 201. Not used when the
access log is on (uvicorn writes it).
"""

from __future__ import annotations

import asyncio
import re
from http import HTTPStatus
from typing import Any

import structlog

from jobwire.api.auth import Authenticator
from jobwire.api.fastpath import Answer, answer, json_answer, takes
from jobwire.api.schemas import error_body
from jobwire.engine import Engine

log = structlog.get_logger("jobwire.api")

_REQUEST_LINE = re.compile(rb"POST /api/v1/jobs/([A-Za-z0-9._~-]+)/runs HTTP/1\.1")
_PREFIX = b"POST /api/v1/jobs/"
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
"""Control characters (tab allowed) inside a head line: uvicorn's parser decides about those.
Searched for once in the head without its line breaks (the lines joined: `split` and `replace`
find the same CRLFs), not line by line."""
_HANDED_OVER = frozenset({b"transfer-encoding", b"expect", b"upgrade"})
_INTERNAL = "internal error (see the jobwire log)"
"""What the app's handler of last resort says too."""
MAX_HEAD = 16 * 1024
"""A head longer than this is uvicorn's to judge (its parser has its own limits)."""
MAX_BUFFERED = 256 * 1024
"""Pipelined bytes held while an answer is made before reading pauses."""
_STATUS = {code.value: f"HTTP/1.1 {code.value} {code.phrase}\r\n".encode() for code in HTTPStatus}


class _Request:
    __slots__ = ("body", "close", "headers", "job", "raw")

    def __init__(self, job: str, headers: dict[bytes, bytes], body: bytes, close: bool, raw: bytes) -> None:
        self.job, self.headers, self.body, self.close = job, headers, body, close
        self.raw = raw
        """The request's bytes as they came (for uvicorn, should the route have to answer it)."""


def parse(buf: bytearray, max_body: int) -> tuple[_Request, int] | int | None:
    """The trigger request at the start of `buf`: (request, bytes it takes); 0 when more bytes are
    needed to tell; None when it is not one this module answers (uvicorn's, from here on)."""
    n = len(buf)
    if buf[: len(_PREFIX)] != _PREFIX[:n]:
        return None
    end = buf.find(b"\r\n\r\n", 0, MAX_HEAD)
    if end < 0:
        return 0 if n < MAX_HEAD else None
    head = bytes(buf[:end])
    lines = head.split(b"\r\n")
    line = _REQUEST_LINE.fullmatch(lines[0])
    if line is None or _CTL.search(head.replace(b"\r\n", b"")):
        return None
    headers: dict[bytes, bytes] = {}
    for raw in lines[1:]:
        name, sep, value = raw.partition(b":")
        if not sep or not name or name.strip(b" \t") != name or b" " in name:
            return None
        name = name.lower()
        if name in headers or name in _HANDED_OVER:
            return None
        headers[name] = value.strip(b" \t")
    close = False
    connection = headers.get(b"connection")
    if connection is not None:
        tokens = {t.strip().lower() for t in connection.split(b",")}
        if b"upgrade" in tokens:
            return None
        close = b"close" in tokens
    if not takes(headers):
        return None
    length = headers.get(b"content-length", b"0")
    if not length.isdigit() or len(length) > 12:
        return None
    body_size = int(length)
    if body_size > max_body:
        return None
    size = end + 4 + body_size
    if n < size:
        return 0
    raw = bytes(buf[:size])
    request = _Request(line.group(1).decode("ascii"), headers, raw[end + 4 :], close, raw)
    return request, size


def trigger_front(
    base: type[asyncio.Protocol], engine: Engine, auth: Authenticator, max_body: int
) -> type[asyncio.Protocol]:
    """`base` (uvicorn's guarded protocol class) answering triggers itself, as described above."""
    parent: Any = base

    class TriggerFront(parent):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._raw = True
            """Until the connection is handed to uvicorn (for good)."""
            self._buf = bytearray()
            self._busy = False
            """An answer is being made (the engine records the run)."""
            self._paused = False
            self._close_after = False

        def waiting_for_head(self) -> bool:
            return not self._busy and bool(super().waiting_for_head())

        def data_received(self, data: bytes) -> None:
            if not self._raw:
                return super().data_received(data)  # type: ignore[no-any-return]
            if not self._admitted:
                return None
            self._idle_until = 0.0  # a byte after an answer: no keep-alive timeout (`answered`)
            self._last_data = self.loop.time()
            self._buf += data
            if self._busy:
                if len(self._buf) > MAX_BUFFERED and not self._paused:
                    self._paused = True
                    self.transport.pause_reading()
                return None
            self._next()
            return None

        def _next(self) -> None:
            if not self._buf or self.transport.is_closing():
                return
            found = parse(self._buf, max_body)
            if found is None:
                return self._hand_over()
            if found == 0:
                return None  # the head deadline runs meanwhile
            assert isinstance(found, tuple)
            request, size = found
            del self._buf[:size]
            self._busy = True
            self.disarm()  # no deadline while the answer is made
            task = self.loop.create_task(self._serve(request))
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)
            return None

        def _hand_over(self) -> None:
            self._raw = False
            data, self._buf = bytes(self._buf), bytearray()
            if self._paused:
                self._paused = False
                self.transport.resume_reading()
            super().data_received(data)

        async def _serve(self, request: _Request) -> None:
            try:
                result: Answer | None = await answer(
                    engine, auth, request.job, request.headers, request.body, yield_to_launch=False
                )
            except Exception as exc:  # the app's handler of last resort answers the same
                log.exception("unhandled error in request", error_type=type(exc).__name__)
                result = json_answer(500, error_body(500, "InternalError", _INTERNAL))
            # The run's attempt, launched at the commit, has its first step scheduled already: the
            # answer goes out after it, so the job starts before its producer hears back (what
            # `EventIntake.submit`'s yield does for other callers, without a step of this task).
            self.loop.call_soon(self._respond, request, result)

        def _respond(self, request: _Request, result: Answer | None) -> None:
            self._busy = False
            transport = self.transport
            if transport.is_closing():
                return
            if result is None:  # the route answers it: uvicorn reads this request again
                self._buf[:0] = request.raw
                return self._hand_over()
            close = request.close or self._close_after
            transport.write(self._wire(*result, close))
            if close:
                transport.close()
                return None
            self.answered()  # uvicorn's request count, keep-alive timeout and the guard's head deadline
            if self._paused and len(self._buf) <= MAX_BUFFERED:
                self._paused = False
                transport.resume_reading()
            self._next()
            return None

        def _wire(self, status: int, body: bytes, headers: dict[str, str] | None, close: bool) -> bytes:
            out = [_STATUS.get(status) or f"HTTP/1.1 {status} \r\n".encode()]
            out.extend(b"%s: %s\r\n" % (k, v) for k, v in self.server_state.default_headers)
            out.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
            for k, v in (headers or {}).items():
                out.append(b"%s: %s\r\n" % (k.lower().encode("latin-1"), v.encode("latin-1")))
            if close:
                out.append(b"connection: close\r\n")
            out.append(b"\r\n")
            out.append(body)
            return b"".join(out)

        def shutdown(self) -> None:
            if self._raw and self._busy:
                self._close_after = True  # closed once the answer in progress is written
                return
            super().shutdown()

    return TriggerFront


__all__ = ["parse", "trigger_front"]
