"""The far end of the end-to-end rows' `http` jobs: a minimal keep-alive HTTP/1.1 server (uvloop,
a reader callback per connection) that answers every request `200` with an empty body and notes, for each one, its
`Idempotency-Key` (jobwire sends the run id) and two times (wall clock):

* **arrival** — when the request's last bytes reached this server's socket: the kernel's receive
  time stamp (`SO_TIMESTAMPNS`, read with `recvmsg`). A run's arrival here is the job's start.
* **handled** — when this process had read and parsed it (`time.time()`). The gap between the two is
  this server's own queue: when 1,000 calls come at once it reads them one by one, and the last is
  handled milliseconds after it arrived (`bench/burst_limit.py` shows both).

Where the kernel gives no stamp (not Linux), arrival is the handled time.

    python -m bench.httpsink --port PORT      # prints "ready" once listening

Its own two paths, never recorded as arrivals:

* `GET /__count` — `{"n": arrivals so far}`;
* `GET /__arrivals` — `[[arrival, key, handled], ...]` of every arrival so far, in order.

It exits when its parent does (it never outlives the benchmark that started it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import time

_OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux's value where Python lacks the name
ARRIVALS: list[tuple[float, str, float]] = []
SPACE = socket.CMSG_SPACE(16)


def _answer(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )


def _stamp(ancdata: list[tuple[int, int, bytes]], default: float) -> float:
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            return int.from_bytes(data[:8], "little", signed=True) + int.from_bytes(data[8:16], "little") / 1e9
    return default


class Conn:
    """One client connection, read by the loop's reader callback with `recvmsg` (for the stamp)."""

    __slots__ = ("buf", "fd", "loop", "out", "sock", "writing")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self.loop, self.sock, self.fd = loop, sock, sock.fileno()
        self.buf = b""
        self.out = b""
        self.writing = False
        """Waiting to write the rest of an answer (`add_writer`)."""
        loop.add_reader(self.fd, self.readable)

    def readable(self) -> None:
        try:
            data, ancdata, _, _ = self.sock.recvmsg(65536, SPACE)
        except BlockingIOError:
            return
        except OSError:
            data, ancdata = b"", []
        if not data:
            self.close()
            return
        handled = time.time()
        self.buf += data
        self.requests(_stamp(ancdata, handled), handled)
        if self.out:
            self.flush()

    def flush(self) -> None:
        """Write what is to be answered, at once; what does not fit waits until it can be written."""
        try:
            sent = self.sock.send(self.out)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close()
            return
        self.out = self.out[sent:]
        if bool(self.out) != self.writing:
            self.writing = bool(self.out)
            if self.writing:
                self.loop.add_writer(self.fd, self.flush)
            else:
                self.loop.remove_writer(self.fd)

    def close(self) -> None:
        self.loop.remove_reader(self.fd)
        if self.writing:
            self.loop.remove_writer(self.fd)
        self.sock.close()

    def requests(self, arrived: float, handled: float) -> None:
        """Every complete request in the buffer: noted (or answered, for the sink's own paths)."""
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
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
                self.out += _answer(json.dumps({"n": len(ARRIVALS)}).encode())
            elif path == b"/__arrivals":
                self.out += _answer(json.dumps(ARRIVALS).encode())
            else:
                ARRIVALS.append((arrived, key, handled))
                self.out += _OK


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)  # the kernel stamps from now on
    listener.bind(("127.0.0.1", port))
    listener.listen(4096)
    listener.setblocking(False)

    def accept() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            Conn(loop, sock)

    loop.add_reader(listener.fileno(), accept)
    print("ready", flush=True)
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(1)
    loop.remove_reader(listener.fileno())
    listener.close()


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
