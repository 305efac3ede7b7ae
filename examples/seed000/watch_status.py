"""Print every status document jobwire publishes to RabbitMQ (seed 000's messages):
`python watch_status.py` — binds a temporary queue to the exchange `jobwire.status` with `#`."""

import asyncio
import os

import aio_pika


async def main() -> None:
    url = os.environ.get("BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    conn = await aio_pika.connect(url)
    async with conn:
        channel = await conn.channel()
        exchange = await channel.declare_exchange("jobwire.status", aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, routing_key="#")
        async with queue.iterator() as messages:
            async for message in messages:
                async with message.process():
                    print(message.routing_key, message.body.decode(), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
