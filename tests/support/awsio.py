"""Helpers for the `sqs` and `s3` source tests: aiobotocore clients on moto, and a TCP proxy in
front of moto whose connections a test can cut (a broker "restart" without losing moto's in-memory
state). Their fake intake is `tests/support/intake.py`."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


def client(service: str, endpoint_url: str | None = None) -> Any:
    from jobwire.sources.sqs.aws import client as make

    return make(service, endpoint_url)


async def queue_url(sqs: Any, name: str) -> str:
    return str((await sqs.get_queue_url(QueueName=name))["QueueUrl"])


async def visible_and_hidden(sqs: Any, url: str) -> tuple[int, int]:
    got = await sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )
    a = got["Attributes"]
    return int(a["ApproximateNumberOfMessages"]), int(a["ApproximateNumberOfMessagesNotVisible"])


async def drain(sqs: Any, url: str) -> list[dict[str, Any]]:
    """Every message now visible on the queue, deleted."""
    out: list[dict[str, Any]] = []
    while True:
        got = await sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0, MessageAttributeNames=["All"]
        )
        messages = got.get("Messages") or []
        if not messages:
            return out
        out += messages
        for m in messages:
            await sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


class CuttableProxy:
    """127.0.0.1:<port> → target. `cut()` closes every connection and refuses (accepts and at once
    closes) new ones until `mend()`; `refused` counts the connections refused meanwhile."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.server: asyncio.Server | None = None
        self.port = 0
        self.down = False
        self.refused = 0
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> CuttableProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            self.refused += 1
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    def cut(self) -> None:
        self.down = True
        self.refused = 0
        for w in list(self._writers):
            w.close()
        self._writers.clear()

    def mend(self) -> None:
        self.down = False

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)
