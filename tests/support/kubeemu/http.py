"""A small HTTP/1.1 server on asyncio: keep-alive, chunked streaming, abortable connections."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

REASONS: dict[int, str] = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    410: "Gone",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def go_json(obj: Any) -> bytes:
    """Compact JSON like Go's encoding/json (``true``/``false``/``null``, no spaces)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    conn: Connection

    def json(self) -> Any:
        return json.loads(self.body.decode() or "null")


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, obj: Any, headers: dict[str, str] | None = None) -> Response:
        return cls(status, go_json(obj), "application/json", headers or {})


@dataclass
class StreamingResponse:
    status: int
    chunks: AsyncIterator[bytes]
    content_type: str = "application/json"
    is_watch: bool = True
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Awaitable[Response | StreamingResponse]]


@dataclass(eq=False)
class Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    streaming: bool = False
    is_watch: bool = False

    def abort(self) -> None:
        transport = self.writer.transport
        if transport is not None and not transport.is_closing():
            transport.abort()


class HttpServer:
    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._on_connect, self.host, self.port, limit=1 << 20)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.abort()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def drop_watches(self) -> int:
        n = 0
        for conn in list(self.connections):
            if conn.is_watch:
                conn.abort()
                n += 1
        return n

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = Connection(reader, writer)
        self.connections.add(conn)
        try:
            await self._serve(conn)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self.connections.discard(conn)
            self._tasks.discard(task)
            conn.abort()

    async def _read_request(self, conn: Connection) -> Request | None:
        try:
            head = await conn.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        body = b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            while True:
                size_line = await conn.reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    await conn.reader.readuntil(b"\r\n")
                    break
                parts.append(await conn.reader.readexactly(size))
                await conn.reader.readexactly(2)
            body = b"".join(parts)
        elif "content-length" in headers:
            body = await conn.reader.readexactly(int(headers["content-length"]))
        split = urlsplit(target)
        query: dict[str, str] = {}
        for k, v in parse_qsl(split.query, keep_blank_values=True):
            query[k] = v
        return Request(method.upper(), unquote(split.path), query, headers, body, conn)

    async def _serve(self, conn: Connection) -> None:
        while True:
            req = await self._read_request(conn)
            if req is None:
                return
            resp = await self.handler(req)
            keep_alive = req.headers.get("connection", "").lower() != "close"
            if isinstance(resp, StreamingResponse):
                await self._write_stream(conn, resp)
            else:
                self._write_head(conn, resp.status, resp.content_type, resp.headers, len(resp.body))
                conn.writer.write(resp.body)
                await conn.writer.drain()
            if not keep_alive:
                conn.writer.close()
                return

    def _write_head(
        self, conn: Connection, status: int, ctype: str, headers: dict[str, str], length: int | None
    ) -> None:
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
        all_headers = {
            "Audit-Id": "00000000-0000-0000-0000-000000000000",
            "Cache-Control": "no-cache, private",
            "Content-Type": ctype,
            "Date": email.utils.formatdate(usegmt=True),
            **headers,
        }
        if length is None:
            all_headers["Transfer-Encoding"] = "chunked"
        else:
            all_headers["Content-Length"] = str(length)
        lines += [f"{k}: {v}" for k, v in all_headers.items()]
        conn.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    async def _write_stream(self, conn: Connection, resp: StreamingResponse) -> None:
        conn.streaming = True
        conn.is_watch = resp.is_watch
        self._write_head(conn, resp.status, resp.content_type, resp.headers, None)
        await conn.writer.drain()

        async def pump() -> None:
            async for chunk in resp.chunks:
                if chunk:
                    conn.writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    await conn.writer.drain()
            conn.writer.write(b"0\r\n\r\n")
            await conn.writer.drain()

        pump_task = asyncio.ensure_future(pump())
        eof_task = asyncio.ensure_future(conn.reader.read(1))
        try:
            done, _ = await asyncio.wait({pump_task, eof_task}, return_when=asyncio.FIRST_COMPLETED)
            if pump_task not in done:
                # client went away (or sent garbage while streaming): stop the stream
                pump_task.cancel()
                raise ConnectionResetError("client closed the stream")
            pump_task.result()
        finally:
            for t in (pump_task, eof_task):
                if not t.done():
                    t.cancel()
            await asyncio.gather(pump_task, eof_task, return_exceptions=True)
            aclose = getattr(resp.chunks, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
            conn.streaming = False
            conn.is_watch = False
