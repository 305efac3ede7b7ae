"""The live status stream as Server-Sent Events: resumable, honest about gaps, and closed on a
client that stops reading.

Every status document has a sequence number (the hub's ring, `engine/ring.py`), sent as the SSE
`id`. A client that reconnects with `Last-Event-ID: <n>` gets every document after `n` that the
ring still holds. When documents were dropped before this client got them — it fell further
behind than the ring keeps, it resumed from too long ago, or its id belongs to an earlier process —
it gets one `event: lagged` first, saying which sequence numbers it missed (or, for an unknown id,
that it cannot be told), so it can re-read state from `GET /runs` instead of believing it saw all.

A client whose socket stops accepting data for `stall_timeout` is disconnected (the connection is
aborted, freeing its descriptor and buffers); what it missed, it can resume with `Last-Event-ID`.
Publishing never waits for a client: the hub appends to its ring once whatever the number of
clients, and each client's loop reads the ring at its own pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from jobwire.api.connections import ABORT_KEY
from jobwire.engine.ring import Gap
from jobwire.engine.status import StatusHub, Subscription

CONNECTED = b": connected\nretry: 2000\n\n"
HEARTBEAT = b": heartbeat\n\n"


def lagged(gap: Gap | None, reason: str) -> bytes:
    """The `lagged` event: sequence numbers `first..last` were dropped (`missed` of them); with
    no gap (an unknown Last-Event-ID) the count cannot be known and is null."""
    data: dict[str, Any] = {"reason": reason, "missed": None, "first": None, "last": None}
    head = "event: lagged\n"
    if gap is not None:
        data.update(missed=gap.missed, first=gap.first, last=gap.last)
        head += f"id: {gap.last}\n"
    return f"{head}data: {json.dumps(data)}\n\n".encode()


def open_subscription(hub: StatusHub, last_event_id: str | None) -> tuple[Subscription, bytes | None]:
    """Subscribe from `Last-Event-ID` when the hub knows that id, else from now (with a `lagged`
    notice when an id was given but cannot be resumed from)."""
    if last_event_id:
        seq = int(last_event_id) if last_event_id.strip().isdigit() else None
        if seq is not None and hub.ring.knows(seq):
            return hub.subscribe(after=seq), None
        reason = (
            "the Last-Event-ID is not one this server handed out (it restarted, or the id is "
            "malformed): re-read state from GET /runs; the stream continues from now"
        )
        return hub.subscribe(), lagged(None, reason)
    return hub.subscribe(), None


async def status_frames(
    sub: Subscription, job: str | None, heartbeat: float, notice: bytes | None = None
) -> AsyncIterator[bytes]:
    """SSE frames for `sub`: `: connected` first (the subscription is already in place, so a client
    that waits for it before triggering misses nothing), then documents — batched, one chunk per
    wake-up — `lagged` notices, and a heartbeat comment every `heartbeat` seconds of silence."""
    try:
        yield CONNECTED
        if notice is not None:
            yield notice
        while True:
            try:
                batch = await sub.next_batch(heartbeat)
            except StopAsyncIteration:
                return
            if batch is None:
                yield HEARTBEAT
                continue
            if batch.gap is not None:
                yield lagged(
                    batch.gap,
                    "this client fell behind the documents the server keeps (JOBWIRE_STREAM_BUFFER); "
                    "re-read state from GET /runs",
                )
            out = b"".join(e.frame() for e in batch.entries if job is None or e.job == job)
            if out:
                yield out
    finally:
        await sub.aclose()


class EventStream(Response):
    """A `text/event-stream` response that ends when the client disconnects, and aborts the
    connection when a write has waited `stall_timeout` for the client to read."""

    media_type = "text/event-stream"

    def __init__(
        self,
        frames: AsyncIterator[bytes],
        stall_timeout: float,
        on_stall: Callable[[], None] | None = None,
        status_code: int = 200,  # read by FastAPI's OpenAPI generation
    ) -> None:
        # not Response.__init__: that would add `content-length: 0` (a stream has no length)
        self.status_code = status_code
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.frames = frames
        self.stall_timeout = stall_timeout
        self.on_stall = on_stall

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        abort: Callable[[], None] | None = (scope.get("state") or {}).get(ABORT_KEY)

        async def pump() -> None:
            start = {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            await send(start)
            async for chunk in self.frames:
                try:
                    async with asyncio.timeout(self.stall_timeout):
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                except TimeoutError:
                    if self.on_stall is not None:
                        self.on_stall()
                    if abort is not None:
                        abort()
                    return
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        tasks = [asyncio.ensure_future(pump()), asyncio.ensure_future(disconnected())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await t
            aclose = getattr(self.frames, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
