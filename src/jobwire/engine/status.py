"""Status fan-out: every state change becomes one StatusDocument, published to every sink and
every live subscriber (`GET /stream`). Each sink has its own queue and worker, so a slow sink
delays nobody; subscribers drop their oldest documents rather than block the engine."""

from __future__ import annotations

import asyncio
import random
from contextlib import suppress
from functools import partial

import structlog

from jobwire.engine.metrics import Metrics
from jobwire.engine.supervisor import Spawn
from jobwire.model import Job, Run, RunState, StatusBlock, StatusDocument, utcnow
from jobwire.sinks.base import Sink

log = structlog.get_logger(__name__)

SINK_QUEUE = 10_000
SUBSCRIBER_QUEUE = 1_000


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


class Subscription:
    """One live subscriber: an async iterator over its own bounded queue, registered at creation,
    unregistered when the hub stops, the iteration ends or `aclose()` is called."""

    def __init__(self, registry: set[asyncio.Queue[StatusDocument | None]]) -> None:
        self._registry = registry
        self._queue: asyncio.Queue[StatusDocument | None] = asyncio.Queue(SUBSCRIBER_QUEUE)
        registry.add(self._queue)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> StatusDocument:
        doc = await self._queue.get()
        if doc is None:
            await self.aclose()
            raise StopAsyncIteration
        return doc

    async def aclose(self) -> None:
        self._registry.discard(self._queue)


class StatusHub:
    def __init__(self, sinks: list[Sink], metrics: Metrics) -> None:
        self._sinks = sinks
        self._metrics = metrics
        self._queues: list[asyncio.Queue[StatusDocument]] = [asyncio.Queue(SINK_QUEUE) for _ in sinks]
        self._subscribers: set[asyncio.Queue[StatusDocument | None]] = set()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, spawn: Spawn | None = None) -> None:
        """Start the sinks and one worker each; `spawn` runs the workers supervised."""
        for sink in self._sinks:
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
        for sink in self._sinks:
            await sink.close()
        for sub in list(self._subscribers):
            with suppress(asyncio.QueueFull):
                sub.put_nowait(None)

    @property
    def listening(self) -> bool:
        """Whether any sink or subscriber would receive a document (if not, none need be built)."""
        return bool(self._sinks or self._subscribers)

    def publish(self, doc: StatusDocument) -> None:
        for sink, q in zip(self._sinks, self._queues, strict=True):
            try:
                q.put_nowait(doc)
            except asyncio.QueueFull:
                self._metrics.sink_dropped.labels(sink.kind).inc()
        for sub in self._subscribers:
            if sub.full():
                with suppress(asyncio.QueueEmpty):
                    sub.get_nowait()
            sub.put_nowait(doc)

    def subscribe(self) -> Subscription:
        """Every document published from this call on: the subscription is in place when this
        returns, so a caller can announce it (SSE `: connected`) without yielding first."""
        return Subscription(self._subscribers)

    async def _worker(self, sink: Sink, q: asyncio.Queue[StatusDocument]) -> None:
        while True:
            doc = await q.get()
            try:
                delay = 0.5
                for attempt in range(1, max(1, sink.max_attempts) + 1):
                    try:
                        await sink.publish(doc)
                        break
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        self._metrics.sink_failures.labels(sink.kind).inc()
                        if attempt >= sink.max_attempts:
                            self._metrics.sink_dropped.labels(sink.kind).inc()
                            log.warning("sink gave up", sink=sink.kind, run_id=doc.run_id, error=str(exc))
                            break
                        await asyncio.sleep(delay * (0.8 + 0.4 * random.random()))
                        delay = min(delay * 2, 30)
            finally:
                q.task_done()
