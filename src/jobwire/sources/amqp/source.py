"""The `amqp` source: RabbitMQ queues in, one recorded event (and run) per message, acknowledged
only after it is committed (aio-pika; the `amqp` pip extra).

Per consumed queue, one connection and one channel with publisher confirms and a prefetch count
(the bound on messages not yet recorded). Messages are taken in batches — everything delivered
since the last batch, up to the prefetch — handed to the engine in ONE `submit` call (one group
commit), then acknowledged with one `basic.ack(multiple)`. A message that cannot become a run
(not JSON, no job, invalid parameters) is recorded `invalid` by the engine and published, with
`x-jobwire-reason`, to the dead-letter exchange (default `jobwire.dead`, bound to the durable
queue of the same name) before it is acknowledged — never requeued for ever. A lost connection
raises: the engine's supervisor restarts the source with backoff, and the broker redelivers what
was not acknowledged (a redelivery of a recorded message is a `duplicate`, not a second run).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import structlog
from aio_pika.abc import AbstractIncomingMessage

from jobwire.model import Incoming
from jobwire.redact import mask_url
from jobwire.sources.amqp.spec import DEFAULT_URL, AmqpSettings, AmqpTrigger
from jobwire.sources.base import Binding, Intake, IntakeUnavailable, Source, dead_letter_reason

log = structlog.get_logger(__name__)

JOB_FIELDS = ("job", "name")
"""Body fields naming the job on a shared queue: `job`, or seed 000's `name`."""
MAX_BODY = 1 << 20


def queue_name(binding: Binding) -> str:
    trigger: AmqpTrigger = binding.trigger
    return trigger.queue or f"jobwire.{binding.job}.{binding.trigger_id}"


def build(bindings: Sequence[Binding], settings: AmqpSettings | None) -> list[Source]:
    """One source per (broker, queue): bindings that name the same queue share its messages
    (a message is handed in once per binding, in one submit, and acknowledged once)."""
    settings = settings or AmqpSettings()
    groups: dict[tuple[str, str], list[Binding]] = {}
    for b in bindings:
        url = b.trigger.url or settings.url or DEFAULT_URL
        groups.setdefault((url, queue_name(b)), []).append(b)
    out: list[Source] = []
    for (url, queue), group in sorted(groups.items()):
        host = urlsplit(url).hostname or "?"
        out.append(AmqpSource(f"amqp-{queue}@{host}", group, settings, url=url, queue=queue))
    return out


class AmqpSource(Source):
    kind = "amqp"

    def __init__(
        self, name: str, bindings: Sequence[Binding], settings: AmqpSettings, *, url: str, queue: str
    ) -> None:
        super().__init__(name, bindings, settings)
        self.url = url
        self.queue = queue
        self.prefetch = max(b.trigger.prefetch for b in self.bindings)
        self.dead_letter_exchange = settings.dead_letter_exchange
        self.health.target = f"{mask_url(url)} queue {queue}"

    async def run(self, intake: Intake) -> None:
        connection = await aio_pika.connect(self.url, timeout=10)
        closed = asyncio.Event()
        lost: list[BaseException | None] = []

        def on_close(_: Any, exc: BaseException | None = None) -> None:
            lost.append(exc)
            closed.set()

        connection.close_callbacks.add(on_close)
        try:
            channel = await connection.channel(publisher_confirms=True)
            await channel.set_qos(prefetch_count=self.prefetch)
            dead = await self._declare(channel)
            inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
            queue = await channel.get_queue(self.queue)
            await queue.consume(self._enqueue(inbox))
            self.health.up()
            log.info("amqp source consuming", source=self.name, target=self.health.target)
            while True:
                batch = await self._next_batch(inbox, closed)
                if batch is None:
                    why = lost[-1] if lost else ""
                    raise ConnectionError(f"connection to {mask_url(self.url)} closed: {why}")
                await self._handle(batch, intake, dead)
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                self.health.down(f"{type(exc).__name__}: {mask_url(str(exc))}")
            raise
        finally:
            self.health.connected = False
            with contextlib.suppress(Exception):
                await connection.close()

    async def _declare(self, channel: aio_pika.abc.AbstractChannel) -> aio_pika.abc.AbstractExchange:
        topic = aio_pika.ExchangeType.TOPIC
        dead = await channel.declare_exchange(self.dead_letter_exchange, topic, durable=True)
        dead_queue = await channel.declare_queue(self.dead_letter_exchange, durable=True)
        await dead_queue.bind(dead, routing_key="#")
        queue = await channel.declare_queue(self.queue, durable=True)
        self.health.lag = queue.declaration_result.message_count
        for b in self.bindings:
            trigger: AmqpTrigger = b.trigger
            if trigger.exchange:
                ex_type = aio_pika.ExchangeType(trigger.exchange_type)
                exchange = await channel.declare_exchange(trigger.exchange, ex_type, durable=True)
                for key in trigger.routing_keys:
                    await queue.bind(exchange, routing_key=key)
        return dead

    @staticmethod
    def _enqueue(inbox: asyncio.Queue[AbstractIncomingMessage]) -> Any:
        async def on_message(message: AbstractIncomingMessage) -> None:
            inbox.put_nowait(message)

        return on_message

    async def _next_batch(
        self, inbox: asyncio.Queue[AbstractIncomingMessage], closed: asyncio.Event
    ) -> list[AbstractIncomingMessage] | None:
        """Everything delivered so far (at least one message), or None once the connection closed."""
        if inbox.empty():
            get = asyncio.ensure_future(inbox.get())
            stop = asyncio.ensure_future(closed.wait())
            try:
                await asyncio.wait({get, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                if not get.done():
                    get.cancel()
            if not get.done() or get.cancelled():
                return None
            batch = [get.result()]
        else:
            batch = []
        while not inbox.empty() and len(batch) < self.prefetch:
            batch.append(inbox.get_nowait())
        return batch

    async def _handle(
        self, batch: list[AbstractIncomingMessage], intake: Intake, dead: aio_pika.abc.AbstractExchange
    ) -> None:
        events: list[Incoming] = []
        counts: list[int] = []
        for message in batch:
            mine = self.incomings(message)
            events += mine
            counts.append(len(mine))
        self.health.received(len(batch))
        try:
            admissions = await intake.submit(events)
        except IntakeUnavailable as exc:
            # not recorded: back to the queue (redelivered; whatever was recorded comes back a duplicate)
            log.warning(
                "amqp batch not recorded; requeued", source=self.name, messages=len(batch), error=str(exc)
            )
            for message in batch:
                await message.nack(requeue=True)
            return
        at = 0
        for message, n in zip(batch, counts, strict=True):
            reasons = [r for r in (dead_letter_reason(a) for a in admissions[at : at + n]) if r]
            at += n
            if reasons:
                await self._dead_letter(dead, message, "; ".join(dict.fromkeys(reasons)))
        await batch[-1].ack(multiple=True)

    async def _dead_letter(
        self, dead: aio_pika.abc.AbstractExchange, message: AbstractIncomingMessage, reason: str
    ) -> None:
        headers = dict(message.headers or {})
        headers.update(
            {
                "x-jobwire-reason": reason[:1000],
                "x-jobwire-queue": self.queue,
                "x-jobwire-routing-key": message.routing_key or "",
            }
        )
        await dead.publish(
            aio_pika.Message(
                message.body,
                headers=headers,
                content_type=message.content_type,
                message_id=message.message_id,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=self.queue,
        )
        self.health.dead_lettered += 1
        log.warning(
            "amqp message dead-lettered", source=self.name, reason=reason, exchange=self.dead_letter_exchange
        )

    def incomings(self, message: AbstractIncomingMessage) -> list[Incoming]:
        """The events one message makes: one per binding of this queue."""
        body = message.body
        problem: str | None = None
        data: Any = None
        if len(body) > MAX_BODY:
            problem = f"message body is {len(body)} bytes, more than {MAX_BODY}"
        else:
            try:
                data = json.loads(body)
            except (UnicodeDecodeError, ValueError) as exc:
                problem = f"message body is not valid JSON: {exc}"
        digest = hashlib.sha256((message.routing_key or "").encode() + b"\0" + body).hexdigest()[:32]
        default_key = message.message_id or digest
        fields = data if isinstance(data, dict) else {}
        if problem is None and not isinstance(data, dict):
            problem = f"message body must be a JSON object, got {type(data).__name__}"
        out: list[Incoming] = []
        for b in self.bindings:
            trigger: AmqpTrigger = b.trigger
            job = b.job
            payload = fields
            why = problem
            if job is None:
                named = next((fields[f] for f in JOB_FIELDS if isinstance(fields.get(f), str)), None)
                payload = {k: v for k, v in fields.items() if k not in JOB_FIELDS}
                if named is None and why is None:
                    why = "the message names no job: expected a `job` (or `name`) field"
                job = named
            key = default_key
            if trigger.event_key and fields.get(trigger.event_key) is not None:
                key = str(fields[trigger.event_key])
            out.append(
                Incoming(
                    job=job,
                    trigger=b.trigger_id,
                    source="amqp",
                    payload=payload if why is None else body.decode("utf-8", "replace")[:4096],
                    event_key=key,
                    input_location=_text(fields.get("input_location")),
                    environment=_text(fields.get("environment")),
                    problem=why,
                )
            )
        return out


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
