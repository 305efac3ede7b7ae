"""Request body size limit, outermost in the app: no body larger than `max_body_bytes` is read.

A declared `Content-Length` over the limit is answered 413 at once, before a byte of the body is
read; a body without one (chunked) is counted as it arrives and cut off with 413 as soon as it
passes the limit, so at most the limit is ever held in memory for one request. The answer carries
`Connection: close`: the rest of an oversized body is not worth reading.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobwire.api.schemas import error_body


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            f"the request body is larger than {limit} bytes; send less, or raise JOBWIRE_MAX_BODY_BYTES",
        )


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP parser refuses it before we are called
    return None


async def _refuse(send: Send, exc: BodyTooLarge) -> None:
    body = json.dumps(error_body(413, "PayloadTooLarge", str(exc.detail)), separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_bytes
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            return await _refuse(send, BodyTooLarge(limit))
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge as exc:
            if started:
                raise
            await _refuse(send, exc)


__all__ = ["BodyLimit", "BodyTooLarge"]
