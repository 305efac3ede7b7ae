"""Publish seed 000's event for a job: `python publish.py convert test/convert/input.csv`.

The message goes to jobwire's shared queue `jobwire.events` on BROKER_URL; its `name` names the
job (here: the Kubernetes template of that name), `input_location` and `environment` travel with
the run into the status documents."""

import asyncio
import json
import os
import sys
import uuid

import aio_pika


async def main(job: str, input_location: str) -> None:
    url = os.environ.get("BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    environment = input_location.split("/", 1)[0]
    body = {"name": job, "input_location": input_location, "environment": environment}
    conn = await aio_pika.connect(url)
    async with conn:
        channel = await conn.channel(publisher_confirms=True)
        await channel.declare_queue("jobwire.events", durable=True)
        message = aio_pika.Message(json.dumps(body).encode(), message_id=uuid.uuid4().hex)
        await channel.default_exchange.publish(message, routing_key="jobwire.events")
    print("published", body)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
