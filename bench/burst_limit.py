"""What "1,000 HTTP calls due at the same instant" can cost at best on this machine: a client that
does nothing but write 1,000 requests built beforehand (each one `transport.write`, as jobwire's
armed calls are), at a whole second, over keep-alive connections opened beforehand and kept from
one round to the next after a round to warm them (as jobwire keeps its own from one second to the
next), to the same sink the end-to-end rows use (`bench/httpsink.py`, its own process). Its due →
arrival (the kernel's receive stamp at the sink) is about the floor no scheduler on these two cores
can go under for that row — context for `e2e-every-second-*` and `e2e-same-minute`, not a jobwire
row. Each round also prints when the sink had read the last calls: its own queue, which the rows
counted as lateness until 2026-12-07.

    .venv/bin/python -m bench.burst_limit [--calls 1000] [--conns 100] [--rounds 5] [--pinned]

`--pinned`: the sink on a core of its own and this client on the others, as the every-second rows
pin the sink and `jobwire serve` (`bench_e2e.own_cores`). `make bench` runs it so, over 1,000
connections (one per call, as jobwire's http target; `--conns 1000`), in section `e2e-bare-burst`
beside those rows (3 rounds with `--quick`, else 5).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import socket
import time
from collections.abc import Callable

from bench.bench_core import pct
from bench.bench_e2e import Sink


class _Burst:
    """What a round waits for: `left` answers still to come, then `done`."""

    def __init__(self) -> None:
        self.left = 0
        self.done: asyncio.Future[None] | None = None

    def expect(self, calls: int) -> asyncio.Future[None]:
        self.left, self.done = calls, asyncio.get_running_loop().create_future()
        return self.done


class _Answers(asyncio.Protocol):
    """Counts the answers on one connection into its burst."""

    def __init__(self, burst: _Burst) -> None:
        self.burst = burst

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        burst = self.burst
        burst.left -= data.count(b"\r\n\r\n")
        if burst.left <= 0 and burst.done is not None and not burst.done.done():
            burst.done.set_result(None)


async def _rounds(sink: Sink, n: int, calls: int, conns: int, each: Callable[[str], None] | None) -> list[list[float]]:
    """A warm-up round, then `n` rounds, over the same connections (kept alive, as jobwire keeps
    its own from one second to the next)."""
    loop = asyncio.get_running_loop()
    burst = _Burst()
    opened = [(await loop.create_connection(lambda: _Answers(burst), "127.0.0.1", sink.port))[0] for _ in range(conns)]
    out: list[list[float]] = []
    for r in range(n + 1):
        tag = f"{time.time_ns()}"
        writes = [
            (
                opened[i % conns].write,
                (
                    f"POST /hook HTTP/1.1\r\nhost: 127.0.0.1:{sink.port}\r\ncontent-type: application/json\r\n"
                    f"content-length: 2\r\nidempotency-key: {tag}-{i}\r\n\r\n{{}}"
                ).encode(),
            )
            for i in range(calls)
        ]
        done = burst.expect(calls)
        due = math.ceil(time.time()) + 1.0
        await asyncio.sleep(max(0.0, due - time.time() - 0.005))
        while time.time() < due:  # the last milliseconds spun: the writes start at the due instant
            pass
        for write, request in writes:  # pipelined on a connection that has several: no wait for an answer
            write(request)
        await done  # every answer read: all calls arrived
        if r == 0:
            continue  # the warm-up round
        mine = f"{tag}-"
        late = sorted(t - due for k, t in sink.arrivals().items() if k.startswith(mine))
        handled = sorted(t - due for k, t in sink.arrivals(handled=True).items() if k.startswith(mine))
        out.append(late)
        if each is not None:
            each(
                f"round {r}: {len(late)} calls, due → arrival p50 {pct(late, 0.5) * 1e3:.1f} ms, "
                f"p99 {pct(late, 0.99) * 1e3:.1f} ms, last {late[-1] * 1e3:.1f} ms "
                f"(handled by the sink: p99 {pct(handled, 0.99) * 1e3:.1f} ms)"
            )
    for transport in opened:
        transport.close()
    return out


def rounds(
    n: int, calls: int = 1000, conns: int = 100, pinned: bool = False, each: Callable[[str], None] | None = None
) -> list[list[float]]:
    """`n` rounds against one sink, after one to warm up; each round's due → arrival of every
    call, sorted (s)."""
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # pragma: no cover
        run = asyncio.run
    sink = Sink()
    with sink:
        if pinned and sink.proc is not None:
            cpus = sorted(os.sched_getaffinity(0))
            if len(cpus) > 1:
                os.sched_setaffinity(sink.proc.pid, {cpus[-1]})
                os.sched_setaffinity(0, set(cpus[:-1]))
        return run(_rounds(sink, n, calls, conns, each))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--conns", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pinned", action="store_true", help="the sink on a core of its own, this client on the others")
    args = ap.parse_args()
    rounds(args.rounds, args.calls, args.conns, args.pinned, lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
