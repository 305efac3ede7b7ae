"""The `amqp` status sink (seed 000: every state change published to RabbitMQ): each status
document, persistent, with publisher confirms, to the durable topic exchange `jobwire.status`
(`JOBWIRE_AMQP_STATUS_EXCHANGE`) with routing key `<job>.<action>` (`JOBWIRE_AMQP_STATUS_ROUTING_KEY`).

It is a durable sink: documents wait in the store's outbox (written with their state change) and
are handed over in order by the outbox relay; `publish_batch` returns only once RabbitMQ confirmed
every document of the batch. It connects lazily and again after any failure, so a broker that is
down at start or goes away later only delays the documents.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aio_pika

from jobwire.redact import mask_url
from jobwire.sinks.base import Sink


def build_sink(settings: Any) -> Sink | None:
    """From the amqp kind's settings section (`jobwire.sources.amqp.spec.AmqpSettings`, handed in
    by the engine: sinks do not import sources)."""
    if settings is None or not settings.url or not settings.status:
        return None
    return AmqpSink(settings.url, settings.status_exchange, settings.status_routing_key)


class AmqpSink(Sink):
    kind = "amqp"
    durable = True

    def __init__(self, url: str, exchange: str, routing_key: str) -> None:
        self.url = url
        self.exchange_name = exchange
        self.routing_key = routing_key
        self._conn: Any = None
        self._exchange: Any = None

    async def _open(self) -> Any:
        if self._exchange is None or self._conn is None or self._conn.is_closed:
            self._conn = await aio_pika.connect(self.url, timeout=10)
            channel = await self._conn.channel(publisher_confirms=True)
            self._exchange = await channel.declare_exchange(
                self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
            )
        return self._exchange

    def key_for(self, doc: dict[str, Any]) -> str:
        return self.routing_key.format(job=doc.get("job", ""), action=doc.get("action", ""))

    async def publish_batch(self, docs: list[str]) -> None:
        try:
            exchange = await self._open()
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            body.encode(),
                            content_type="application/json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        ),
                        routing_key=self.key_for(json.loads(body)),
                    )
                    for body in docs
                )
            )
        except Exception as exc:
            await self.close()
            raise ConnectionError(f"status to {mask_url(self.url)} not confirmed: {exc}") from None

    async def publish(self, doc: Any) -> None:
        await self.publish_batch([doc.model_dump_json()])

    async def close(self) -> None:
        conn, self._conn, self._exchange = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
