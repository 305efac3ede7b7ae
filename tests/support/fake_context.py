"""Test doubles for targets and sinks.

* `FakeContext`: a concrete RunContext that records `started`/`report` calls, collects log bytes and
  lets a test resolve the callback.
* `RecordingServer`: a tiny in-process HTTP/1.1 server (asyncio streams, no framework) that records
  every request and can answer with any status, echo, send a large body or hang until the client
  goes away (and record that it did).
* `wait_until`: wait for a condition with a deadline (never sleep to synchronise).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from jobwire.model import Job, Run, RunState, StatusBlock, event_run_key, run_id_for, utcnow
from jobwire.targets.base import CallbackResult, RunContext


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `predicate` until it holds; fail with `what` after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


class FakeContext(RunContext):
    def __init__(
        self,
        job: Job,
        params: dict[str, Any] | None = None,
        *,
        attempt: int = 1,
        resumed: bool = False,
        callback_url: str | None = "http://127.0.0.1:9/api/v1/runs/x/callback",
        callback_token: str = "cb-token-secret",
    ) -> None:
        key = event_run_key(job.name, "api", uuid.uuid4().hex)
        self.run = Run(
            id=run_id_for(key),
            key=key,
            job=job.name,
            trigger="api",
            event_id="ev-" + uuid.uuid4().hex[:12],
            state=RunState.pending,
            attempt=attempt,
            params=dict(params or {}),
            created_at=utcnow(),
        )
        self.job = job
        self.params = dict(params or {})
        self.resumed = resumed
        self.callback_url = callback_url
        self.callback_token = callback_token
        self.started_calls: list[tuple[str | None, StatusBlock | None]] = []
        self.reports: list[tuple[StatusBlock, dict[str, Any] | None]] = []
        self.calls: list[str] = []
        """Order of calls: "started", "report", "log"."""
        self.log_data = bytearray()
        self._callback: asyncio.Future[CallbackResult] | None = None
        self.deadlines: list[float | None] = []
        self.startable_calls = 0
        """What `until_startable` returns, one per call (a start fence's deadline; then None)."""

    # ---- RunContext
    async def started(self, ref: str | None, status: StatusBlock | None = None) -> None:
        self.started_calls.append((ref, status))
        self.calls.append("started")

    async def report(self, status: StatusBlock, target_status: dict[str, Any] | None = None) -> None:
        self.reports.append((status, target_status))
        self.calls.append("report")

    def log(self, data: bytes) -> None:
        self.log_data += data
        self.calls.append("log")

    async def callback(self) -> CallbackResult:
        return await self._callback_future()

    async def until_startable(self) -> float | None:
        self.startable_calls += 1
        return self.deadlines.pop(0) if self.deadlines else None

    # ---- for tests
    def _callback_future(self) -> asyncio.Future[CallbackResult]:
        if self._callback is None:
            self._callback = asyncio.get_running_loop().create_future()
        return self._callback

    def resolve_callback(self, ok: bool = True, message: str | None = None, **data: Any) -> None:
        self._callback_future().set_result(CallbackResult(ok=ok, message=message, data=data))

    @property
    def ref(self) -> str | None:
        return self.started_calls[0][0] if self.started_calls else None

    @property
    def text(self) -> str:
        return self.log_data.decode("utf-8", errors="replace")

    async def wait_started(self, timeout: float = 10.0) -> None:
        await wait_until(lambda: bool(self.started_calls), timeout, "ctx.started")

    async def wait_log(self, needle: str, timeout: float = 10.0) -> None:
        await wait_until(lambda: needle in self.text, timeout, f"{needle!r} in the run log")


# --------------------------------------------------------------------------- HTTP server


@dataclass
class SeenRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class RecordingServer:
    """Routes (by path):

    * `/status/<code>` — answers `<code>` with body `?body=` (default `status <code>`)
    * `/echo` — 200 with a JSON description of the request
    * `/big?size=N` — 200 with N bytes of `x`
    * `/hang` — never answers; `disconnects` counts clients that hung up while waiting
    * `/fail-once` — 500 the first time a body arrives, 200 when the same body comes again (a retry)
    * `/drop-kept` — 200 `ok` as a connection's first request; later on it, the connection is closed
      unanswered (as a server closing a kept-alive connection just as a request comes)
    * anything else — 200 `ok`
    """

    host: str = "127.0.0.1"
    requests: list[SeenRequest] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)
    """Each request's arrival (`time.time()` once its body was read), in the order of `requests`."""
    disconnects: int = 0
    hanging: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _bodies_seen: set[bytes] = field(default_factory=set)

    async def start(self) -> RecordingServer:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            await self._server.wait_closed()

    def url(self, path: str = "/") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        served = 0
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = h.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                size = int(headers.get("content-length", "0"))
                body = await reader.readexactly(size) if size else b""
                parts = urlsplit(target)
                seen = SeenRequest(method, parts.path, parse_qs(parts.query), headers, body)
                self.requests.append(seen)
                self.arrived.append(time.time())
                served += 1
                if parts.path == "/drop-kept" and served > 1:
                    return
                if parts.path == "/hang":
                    self.hanging += 1
                    await reader.read()  # until the client closes the connection
                    self.disconnects += 1
                    return
                status, payload = self._fail_once(seen) if parts.path == "/fail-once" else self._route(seen)
                reason = "OK" if status < 400 else "Error"
                head = f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(payload)}\r\n"
                head += "Content-Type: text/plain\r\n\r\n"
                writer.write(head.encode() + (b"" if method == "HEAD" else payload))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    def _fail_once(self, req: SeenRequest) -> tuple[int, bytes]:
        if req.body in self._bodies_seen:
            return 200, b"ok"
        self._bodies_seen.add(req.body)
        return 500, b"first delivery of this body fails"

    @staticmethod
    def _route(req: SeenRequest) -> tuple[int, bytes]:
        if req.path.startswith("/status/"):
            code = int(req.path.rsplit("/", 1)[1])
            return code, req.query.get("body", [f"status {code}"])[0].encode()
        if req.path == "/echo":
            doc = {"method": req.method, "headers": req.headers, "body": req.body.decode()}
            return 200, json.dumps(doc).encode()
        if req.path == "/big":
            return 200, b"x" * int(req.query.get("size", ["100000"])[0])
        return 200, b"ok"
