"""Status fan-out: every state change becomes one StatusDocument, published to every sink and
every live subscriber (`GET /stream`). Each sink has its own queue and worker, so a slow sink
delays nobody. Subscribers read one shared ring of recent documents (`engine/ring.py`), each at
its own cursor: publishing costs the same for one subscriber or a thousand, and a subscriber that
falls behind the ring is told how many documents it missed instead of losing them silently."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from functools import partial

import structlog

from jobwire.engine.metrics import Metrics
from jobwire.engine.ring import Gap, Ring
from jobwire.engine.supervisor import Spawn, describe
from jobwire.model import Job, Run, RunState, StatusBlock, StatusDocument, utcnow
from jobwire.sinks.base import Sink
from jobwire.store import OutboxRow

log = structlog.get_logger(__name__)

SINK_QUEUE = 10_000
STREAM_BUFFER = 10_000
"""Default number of recent documents kept for stream readers (`JOBWIRE_STREAM_BUFFER`)."""
BATCH = 256
"""At most this many documents per read: a reader far behind catches up in bounded steps."""
WAKE_INTERVAL = 0.02
"""Readers are woken at most this often (seconds): under load each wake-up reads a batch."""
RESUME_WINDOW = 300.0
"""Documents are still kept this long after the last stream client left, for it to resume."""


def status_block(run: Run, override: StatusBlock | None = None) -> StatusBlock:
    """Seed 000's JobStatus fields for any target: from the target when it has them (Kubernetes),
    otherwise derived from the run."""
    if override is not None:
        return override
    return StatusBlock(
        active=1 if run.state == RunState.running else 0,
        startTime=run.started_at,
        completionTime=run.finished_at if run.state == RunState.succeeded else None,
        succeeded=1 if run.state == RunState.succeeded else 0,
        failed=run.attempt - 1
        if not (run.state.terminal and run.state != RunState.succeeded)
        else run.attempt,
    )


def document(run: Run, job: Job | None, block: StatusBlock | None = None) -> StatusDocument:
    return StatusDocument(
        name=run.job,
        input_location=run.input_location,
        action=run.state.value,
        status=status_block(run, block),
        environment=run.environment if run.environment is not None else (job.environment if job else None),
        error=run.error,
        run_id=run.id,
        event_id=run.event_id,
        job=run.job,
        attempt=run.attempt,
        time=utcnow(),
    )


class Entry:
    """One published document in the ring, with its SSE frame built once, by the first reader
    that needs it (never by the publisher)."""

    __slots__ = ("_frame", "doc", "seq")

    def __init__(self, seq: int, doc: StatusDocument) -> None:
        self.seq = seq
        self.doc = doc
        self._frame: bytes | None = None

    @property
    def job(self) -> str:
        return self.doc.job

    def frame(self) -> bytes:
        if self._frame is None:
            self._frame = f"event: status\nid: {self.seq}\ndata: {self.doc.model_dump_json()}\n\n".encode()
        return self._frame


@dataclass(slots=True)
class Batch:
    """What a subscriber reads in one go: documents it missed (if any) and the next entries."""

    gap: Gap | None
    entries: list[Entry]


class Subscription:
    """One live reader of the hub's ring at its own cursor. As an async iterator it yields the
    documents (counting, in `missed`, those it fell too far behind to get); `next_batch` is the
    lower-level read the SSE stream uses. Ends when the hub stops or on `aclose()`."""

    def __init__(self, hub: StatusHub, after: int) -> None:
        self._hub = hub
        self.cursor = after
        self.missed = 0
        self._pending: list[Entry] = []
        self._open = True
        hub._reader_opened()

    async def next_batch(self, timeout: float | None = None) -> Batch | None:  # noqa: ASYNC109
        """The next entries (at most BATCH), waiting up to `timeout` for some; None on timeout.
        Raises StopAsyncIteration once the hub has stopped and everything is read."""
        ring = self._hub.ring
        while True:
            gap, entries, self.cursor = ring.read(self.cursor, BATCH)
            if gap is not None or entries:
                if gap is not None:
                    self.missed += gap.missed
                    self._hub._metrics.stream_missed.inc(gap.missed)
                return Batch(gap, entries)
            if ring.closed or not self._open:
                await self.aclose()
                raise StopAsyncIteration
            if not await ring.wait(self.cursor, timeout):
                return None

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> StatusDocument:
        while not self._pending:
            batch = await self.next_batch()
            if batch is not None:
                self._pending = batch.entries[::-1]
        return self._pending.pop().doc

    async def aclose(self) -> None:
        if self._open:
            self._open = False
            self._hub._reader_closed()


class StatusHub:
    def __init__(
        self,
        sinks: list[Sink],
        metrics: Metrics,
        buffer: int = STREAM_BUFFER,
        wake_interval: float = WAKE_INTERVAL,
    ) -> None:
        self.durable = [s for s in sinks if s.durable]
        """Sinks fed from the store's outbox (`engine/outbox.py`), not from a queue here."""
        self._all_sinks = sinks
        self._sinks = [s for s in sinks if not s.durable]
        self._metrics = metrics
        self._queues: list[asyncio.Queue[StatusDocument]] = [asyncio.Queue(SINK_QUEUE) for _ in self._sinks]
        self.outbox: Callable[[str, OutboxRow], None] | None = None
        """Where documents for durable sinks go (`Committer.outbox`), set by the engine."""
        self.outbox_room: Callable[[Sink], bool] = lambda _: True
        """Whether a durable sink's outbox has room (it is bounded); set by the engine."""
        # sequence numbers start at the current time in microseconds: ids of a later process are
        # larger than any id of an earlier one, so a client's Last-Event-ID can be told apart
        self.ring: Ring[Entry] = Ring(buffer, base=time.time_ns() // 1000, wake_interval=wake_interval)
        self._readers = 0
        self._idle_since: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.relay: Callable[[StatusDocument], None] | None = None
        """Where every document published here also goes: the other replicas (`engine/shared.py`)."""
        self.failing: dict[str, tuple[float, str]] = {}
        """Sink worker task name → (since when, the last error) while its deliveries fail: its task
        runs (it retries each document), so `/readyz` and the dashboard show it failing from here."""

    async def start(self, spawn: Spawn | None = None) -> None:
        """Start the sinks and one worker each; `spawn` runs the workers supervised."""
        for sink in self._all_sinks:
            await sink.start()
        self._tasks = []
        for s, q in zip(self._sinks, self._queues, strict=True):
            name = f"jobwire-sink-{s.kind}"
            if spawn is None:
                self._tasks.append(asyncio.create_task(self._worker(s, q), name=name))
            else:
                self._tasks.append(spawn(name, partial(self._worker, s, q)))

    async def stop(self, drain_timeout: float = 5.0) -> None:
        with suppress(TimeoutError):
            async with asyncio.timeout(drain_timeout):
                for q in self._queues:
                    await q.join()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with suppress(asyncio.CancelledError):
                await t
        for sink in self._all_sinks:
            await sink.close()
        self.ring.close()

    @property
    def listening(self) -> bool:
        """Whether a document would reach anyone: a sink, a subscriber, or a stream client that
        left less than RESUME_WINDOW ago and may come back with `Last-Event-ID`."""
        return bool(self._all_sinks or self.relay is not None) or self.reading

    @property
    def reading(self) -> bool:
        """Whether a stream client reads, or left less than RESUME_WINDOW ago (and may resume)."""
        if self._readers:
            return True
        return self._idle_since is not None and time.monotonic() - self._idle_since < RESUME_WINDOW

    def publish(self, doc: StatusDocument, later: Callable[[Callable[[], None]], None] | None = None) -> None:
        """O(1) in the number of subscribers: one append to the ring, one wake-up for all.

        A durable sink's row joins the transaction of the state change it reports. With `later`
        (the committer's `after_commit`), everything else — sinks, stream readers, other replicas —
        is delivered only once that change is committed: a reader told a run ended who then asks
        the API for it reads it ended (a run's end leaves memory at once; the store has it only
        after the commit)."""
        if self.durable and self.outbox is not None:
            body = doc.model_dump_json()
            for sink in self.durable:
                if self.outbox_room(sink):
                    self.outbox(doc.run_id, OutboxRow(sink.outbox_name, body))
                else:
                    self._metrics.sink_dropped.labels(sink.kind).inc()
        if later is None:
            self._deliver(doc)
        else:
            later(lambda: self._deliver(doc))

    def _deliver(self, doc: StatusDocument) -> None:
        for sink, q in zip(self._sinks, self._queues, strict=True):
            try:
                q.put_nowait(doc)
            except asyncio.QueueFull:
                self._metrics.sink_dropped.labels(sink.kind).inc()
        self.ring.append(Entry(self.ring.last + 1, doc))
        if self.relay is not None:
            self.relay(doc)

    def publish_remote(self, doc: StatusDocument) -> None:
        """A document another replica published (and gave its sinks): for this one's stream readers only."""
        self.ring.append(Entry(self.ring.last + 1, doc))

    def skip(self) -> None:
        """A state change nobody listened to: it takes a sequence number, so a stream client that
        resumes across it is told it missed something."""
        self.ring.skip()

    def unheard(self) -> bool:
        """`not listening`, then `skip`: True when nobody would read a document now, whose change
        then took its sequence number."""
        # `listening`'s test written out: this runs for each state change (three a run)
        if self._all_sinks or self.relay is not None or self._readers:
            return False
        if self._idle_since is not None and time.monotonic() - self._idle_since < RESUME_WINDOW:
            return False
        self.ring.skip()
        return True

    def subscribe(self, after: int | None = None) -> Subscription:
        """Documents after sequence number `after` still in the ring (default: every document
        published from this call on). The subscription is in place when this returns, so a caller
        can announce it (SSE `: connected`) without yielding first."""
        return Subscription(self, self.ring.last if after is None else after)

    def _reader_opened(self) -> None:
        self._readers += 1
        self._idle_since = None
        self._metrics.stream_clients.set(self._readers)

    def _reader_closed(self) -> None:
        self._readers -= 1
        self._metrics.stream_clients.set(self._readers)
        if self._readers == 0:
            self._idle_since = time.monotonic()

    async def _worker(self, sink: Sink, q: asyncio.Queue[StatusDocument]) -> None:
        name = f"jobwire-sink-{sink.kind}"
        while True:
            doc = await q.get()
            try:
                delay = 0.5
                for attempt in range(1, max(1, sink.max_attempts) + 1):
                    try:
                        await sink.publish(doc)
                        self.failing.pop(name, None)
                        break
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        since = self.failing.get(name, (time.time(), ""))[0]
                        self.failing[name] = (since, describe(exc))
                        self._metrics.sink_failures.labels(sink.kind).inc()
                        if attempt >= sink.max_attempts:
                            self._metrics.sink_dropped.labels(sink.kind).inc()
                            log.warning("sink gave up", sink=sink.kind, run_id=doc.run_id, error=str(exc))
                            break
                        await asyncio.sleep(delay * (0.8 + 0.4 * random.random()))
                        delay = min(delay * 2, 30)
            finally:
                q.task_done()
