"""The far end of the end-to-end rows' `http` jobs: a minimal keep-alive HTTP/1.1 server (uvloop,
raw asyncio protocol) that answers every request `200` with an empty body and notes, for each one,
its arrival time (wall clock, `time.time()` when its head was complete) and its `Idempotency-Key`
(jobwire sends the run id). A run's arrival here is the job's start.

    python -m bench.httpsink --port PORT      # prints "ready" once listening

Its own two paths, never recorded as arrivals:

* `GET /__count` — `{"n": arrivals so far}`;
* `GET /__arrivals` — `[[time, key], ...]` of every arrival so far, in order.

It exits when its parent does (it never outlives the benchmark that started it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

_OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
ARRIVALS: list[tuple[float, str]] = []


def _answer(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )


class SinkProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            now = time.time()
            lines = self.buf[:end].split(b"\r\n")
            length, key = 0, ""
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value.strip())
                elif name == b"idempotency-key":
                    key = value.strip().decode("latin-1")
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            path = lines[0].split(b" ")[1] if b" " in lines[0] else b""
            if path == b"/__count":
                self.transport.write(_answer(json.dumps({"n": len(ARRIVALS)}).encode()))
            elif path == b"/__arrivals":
                self.transport.write(_answer(json.dumps(ARRIVALS).encode()))
            else:
                ARRIVALS.append((now, key))
                self.transport.write(_OK)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(SinkProtocol, "127.0.0.1", port, backlog=4096)
    print("ready", flush=True)
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(1)
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args.port))
    except ImportError:  # pragma: no cover
        asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
