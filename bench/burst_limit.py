"""What "1,000 HTTP calls due at the same instant" can cost at best on this machine: a client that
does nothing but write 1,000 requests built beforehand, at a whole second, over keep-alive
connections opened beforehand (100, as jobwire's http target allows in flight), to the same sink
the end-to-end rows use (`bench/httpsink.py`, its own process). Its due → arrival is the floor no
scheduler on these two cores can go under for that row — context for `e2e-every-second-*` and
`e2e-same-minute`, not a jobwire row.

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
import time
from collections.abc import Callable

from bench.bench_core import pct
from bench.bench_e2e import Sink


async def _round(port: int, calls: int, conns: int) -> float:
    opened = [await asyncio.open_connection("127.0.0.1", port) for _ in range(conns)]
    tag = f"{time.time_ns()}"
    requests = [
        (
            f"POST /hook HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
            f"content-length: 2\r\nidempotency-key: {tag}-{i}\r\n\r\n{{}}"
        ).encode()
        for i in range(calls)
    ]
    due = math.ceil(time.time()) + 1.0
    await asyncio.sleep(max(0.0, due - time.time() - 0.005))
    while time.time() < due:  # the last milliseconds spun: the writes start at the due instant
        pass
    for i, request in enumerate(requests):  # pipelined: no wait for an answer
        opened[i % conns][1].write(request)
    for _, writer in opened:
        await writer.drain()
    for c, (reader, writer) in enumerate(opened):  # every answer read: all calls arrived
        for _ in range(calls // conns + (1 if c < calls % conns else 0)):
            await reader.readuntil(b"\r\n\r\n")
        writer.close()
    return due


def rounds(
    n: int, calls: int = 1000, conns: int = 100, pinned: bool = False, each: Callable[[str], None] | None = None
) -> list[list[float]]:
    """`n` rounds against one sink; each round's due → arrival of every call, sorted (s)."""
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # pragma: no cover
        run = asyncio.run
    out: list[list[float]] = []
    with Sink() as sink:
        if pinned:
            cpus = sorted(os.sched_getaffinity(0))
            if len(cpus) > 1:
                os.sched_setaffinity(sink.proc.pid, {cpus[-1]})
                os.sched_setaffinity(0, set(cpus[:-1]))
        for r in range(n):
            before = set(sink.arrivals())
            due = run(_round(sink.port, calls, conns))
            arrived = {k: t for k, t in sink.arrivals().items() if k not in before}
            late = sorted(t - due for t in arrived.values())
            out.append(late)
            if each is not None:
                each(
                    f"round {r + 1}: {len(late)} calls, due → arrival p50 {pct(late, 0.5) * 1e3:.1f} ms, "
                    f"p99 {pct(late, 0.99) * 1e3:.1f} ms, last {late[-1] * 1e3:.1f} ms"
                )
    return out


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
