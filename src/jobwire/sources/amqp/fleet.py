"""The runner fleet's wire (aio-pika): the work queue from the scheduler to the runners and the
results queue back (`jobwire serve --role scheduler|runner`; docs/fleet.md).

Both queues are durable **quorum** queues: a message is confirmed to its publisher only once it is
on disk (Raft log, fsynced) — on a cluster, on a majority of nodes — and a consumer that dies
returns its unacknowledged messages to the queue, with the delivery counted (`x-delivery-count`).
Every message is persistent and published with publisher confirms: `publish_*` returns only once
RabbitMQ has taken it. A lost connection makes the `consume_*` call raise: its supervised loop
reconnects with backoff, and RabbitMQ redelivers what was not acknowledged.

Only this module (and the amqp source and sink) imports aio-pika: the engine reaches it through
`jobwire.engine.fleet` and `jobwire.engine.runner`, which load it only when a role needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue

from jobwire.redact import mask_url

QUEUE_ARGUMENTS: dict[str, Any] = {"x-queue-type": "quorum"}
"""Work and results are quorum queues (see the module doc); no delivery limit: a run's work message
is never dropped because runners died under it — the run id makes each redelivery adopt, not double."""

PERSISTENT = aio_pika.DeliveryMode.PERSISTENT
CANCELS_SUFFIX = ".cancels"
STREAM_ARGUMENTS: dict[str, Any] = {"x-queue-type": "stream", "x-max-age": "1D"}
"""The cancels (`<work queue>.cancels`) are a **stream**: an append-only log every runner reads
without taking messages away from the others — a runner that starts later reads back the last day
of it, so a cancel reaches every runner, even one that was not there when it was sent."""


def cancels_queue(work_queue: str) -> str:
    return work_queue + CANCELS_SUFFIX


PERSONAL_ARGUMENTS: dict[str, Any] = {**QUEUE_ARGUMENTS, "x-expires": 24 * 3600 * 1000}
"""A scheduler replica's own results queue (`<results queue>.replica.<id>`: results the other
replicas forward to it) goes away a day after its last consumer (a replica id is fresh per start)."""


def _arguments(queue: str) -> dict[str, Any]:
    if queue.endswith(CANCELS_SUFFIX):
        return STREAM_ARGUMENTS
    return PERSONAL_ARGUMENTS if ".replica." in queue else QUEUE_ARGUMENTS


@dataclass(slots=True)
class Delivery:
    """One message taken from a queue: its body, whether RabbitMQ delivered it before (to a consumer
    that went away without acknowledging it), and its acknowledgement."""

    body: bytes
    redelivered: bool
    message: AbstractIncomingMessage

    async def ack(self) -> None:
        await self.message.ack()


class Link:
    """One connection to the broker, with a confirming channel to publish on and one to consume
    from; (re)opened by `open`, closed by `close`."""

    def __init__(self, url: str, work_queue: str, results_queue: str) -> None:
        self.url = url
        self.work_queue = work_queue
        self.results_queue = results_queue
        self.cancels = cancels_queue(work_queue)
        self._conn: AbstractConnection | None = None
        self._publish: AbstractChannel | None = None
        self._lock = asyncio.Lock()
        self.where = f"{mask_url(url)} queues {work_queue}, {results_queue}"

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed

    async def _channel(self) -> AbstractChannel:
        async with self._lock:
            if self._publish is None or self._publish.is_closed or not self.connected:
                await self.close()
                self._conn = await aio_pika.connect(self.url, timeout=10)
                self._publish = await self._conn.channel(publisher_confirms=True)
                for name in (self.work_queue, self.results_queue, self.cancels):
                    await self._publish.declare_queue(name, durable=True, arguments=_arguments(name))
            return self._publish

    async def open(self) -> None:
        await self._channel()

    async def depth(self, queue: str) -> tuple[int, int]:
        """Messages ready in `queue` (not delivered to any consumer) and its consumers."""
        channel = await self._channel()
        q = await channel.declare_queue(queue, durable=True, arguments=_arguments(queue))
        result = q.declaration_result
        return int(result.message_count or 0), int(result.consumer_count or 0)

    async def publish(
        self,
        queue: str,
        messages: list[tuple[str, bytes]],
        on_confirmed: Callable[[str], None] | None = None,
    ) -> None:
        """Publish (message id, body) pairs to `queue`, persistent; returns once RabbitMQ confirmed
        every one, raises ConnectionError if any is not. `on_confirmed(message id)` is called as
        each confirm arrives (also for those confirmed before another one failed)."""

        async def one(exchange: Any, mid: str, body: bytes) -> None:
            message = aio_pika.Message(
                body, message_id=mid, content_type="application/json", delivery_mode=PERSISTENT
            )
            await exchange.publish(message, routing_key=queue)
            if on_confirmed is not None:
                on_confirmed(mid)

        try:
            channel = await self._channel()
            exchange = channel.default_exchange
            await asyncio.gather(*(one(exchange, mid, body) for mid, body in messages))
        except Exception as exc:
            await self.close()
            where = f"{mask_url(self.url)} queue {queue}"
            raise ConnectionError(f"publish to {where} not confirmed: {exc}") from None

    async def consume(
        self,
        queue: str,
        prefetch: int,
        on_message: Callable[[Delivery], Awaitable[None] | None],
        stop: asyncio.Event | None = None,
        drain: Callable[[], Awaitable[None]] | None = None,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Consume `queue` with `prefetch` messages unacknowledged at most, calling `on_message`
        for each, until the connection is lost (then raise ConnectionError) or the task is cancelled.
        When `stop` is set: no more deliveries (basic.cancel), `drain()` is awaited with the channel
        still open (so what is in progress can be acknowledged), then return. `arguments`: the
        consumer's (a stream's `x-stream-offset`)."""
        await self._channel()
        assert self._conn is not None
        conn = self._conn
        closed = asyncio.Event()
        why: list[Any] = []

        def on_close(_: Any, exc: BaseException | None = None) -> None:
            why.append(exc)
            closed.set()

        conn.close_callbacks.add(on_close)
        channel = await conn.channel()
        try:
            await channel.set_qos(prefetch_count=prefetch)
            q: AbstractQueue = await channel.declare_queue(queue, durable=True, arguments=_arguments(queue))

            async def deliver(message: AbstractIncomingMessage) -> None:
                result = on_message(Delivery(message.body, bool(message.redelivered), message))
                if result is not None:
                    await result

            tag = await q.consume(deliver, arguments=arguments)
            channel.close_callbacks.add(on_close)
            waits = {asyncio.ensure_future(closed.wait())}
            if stop is not None:
                waits.add(asyncio.ensure_future(stop.wait()))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
            if stop is not None and stop.is_set() and not closed.is_set():
                await q.cancel(tag)
                if drain is not None:
                    await drain()
                return
            raise ConnectionError(f"connection to {self.where} closed: {why[-1] if why else ''}")
        finally:
            with contextlib.suppress(Exception):
                conn.close_callbacks.discard(on_close)
            with contextlib.suppress(Exception):
                await channel.close()

    async def close(self) -> None:
        conn, self._conn, self._publish = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


def connect(url: str, work_queue: str, results_queue: str) -> Link:
    return Link(url, work_queue, results_queue)


__all__ = ["QUEUE_ARGUMENTS", "STREAM_ARGUMENTS", "Delivery", "Link", "cancels_queue", "connect"]
