"""What sharing costs between two replicas on one PostgreSQL database (docs/replicas.md, "What the replicas share").

    .venv/bin/python -m bench.bench_shared [--jobs 100] [--docs 20000] [--seconds 2]

Two engines in this process, each with its own store object and data folder, on a fresh database
(JOBWIRE_BENCH_POSTGRES, default postgresql://postgres@127.0.0.1:5432/postgres), dropped after:

* catalogue: a job put over replica a → installed on replica b (latency per change);
* status stream: documents published on a → read by a subscriber of b (latency, and documents/s
  for a burst);
* admission: `record()` of one-run batches with and without a slot claim (the advisory lock and
  the count in the commit transaction), intakes/s.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import asyncpg

from jobwire.config import Settings
from jobwire.engine import Engine
from jobwire.model import Job, StatusBlock, StatusDocument, utcnow
from jobwire.store import SlotClaim
from jobwire.store.postgres import PostgresStore

from .bench_store import make_intake

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def row(what: str, values: list[float]) -> None:
    ms = [v * 1000 for v in values]
    print(f"{what:<44} n={len(ms):>6}  p50 {pct(ms, 50):7.2f} ms  p99 {pct(ms, 99):7.2f} ms  max {max(ms):7.2f} ms")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    admin = await asyncpg.connect(PG_ADMIN, timeout=5)
    name = f"jwbench_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{PG_ADMIN.rpartition('/')[0]}/{name}"
    engines: list[Engine] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in range(2):
                s = Settings(data_dir=Path(tmp) / f"r{n}", shutdown_grace=timedelta(seconds=2))
                eng = Engine(s, store=PostgresStore(url, pool_size=4, auto_migrate=True))
                await eng.start()
                engines.append(eng)
            a, b = engines
            while not (a.shared and b.shared and a.shared.bus.connected and b.shared.bus.connected):
                await asyncio.sleep(0.01)
            await catalogue(a, b, args.jobs)
            await stream(a, b, args.docs)
            await admission(a.store, args.seconds)  # type: ignore[arg-type]
    finally:
        for eng in engines:
            await eng.stop()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def catalogue(a: Engine, b: Engine, jobs: int) -> None:
    lat: list[float] = []
    for i in range(jobs):
        job = Job.model_validate({"name": f"j{i}", "target": {"type": "local", "command": ["true"]}})
        t0 = time.perf_counter()
        await a.put_job(job)
        while f"j{i}" not in b.jobs:
            await asyncio.sleep(0.0005)
        lat.append(time.perf_counter() - t0)
    row("catalogue: put on a → installed on b", lat)


async def stream(a: Engine, b: Engine, docs: int) -> None:
    sub = b.subscribe()
    block = StatusBlock()

    def doc(i: int) -> StatusDocument:
        return StatusDocument(
            name="bench", action="running", status=block, run_id=f"r{i}", event_id="e", job="bench",
            attempt=1, time=utcnow(),
        )  # fmt: skip

    lat: list[float] = []
    for i in range(200):  # one at a time: latency
        a.hub.publish(doc(i))
        got = await sub.__anext__()
        lat.append((utcnow() - got.time).total_seconds())
    row("stream: published on a → read on b, one by one", lat)
    t0 = time.perf_counter()
    for i in range(docs):  # a burst: throughput (the publisher yields every 100, as a busy engine does)
        a.hub.publish(doc(i))
        if i % 100 == 99:
            await asyncio.sleep(0)
    seen, gaps, last = 0, 0, t0
    burst: list[float] = []
    while seen < docs:
        batch = await sub.next_batch(2)
        if batch is None:
            break  # nothing more within 2 s: the rest was dropped (counted as gaps)
        last = time.perf_counter()
        for entry in batch.entries:
            burst.append((utcnow() - entry.doc.time).total_seconds())
        seen += len(batch.entries)
        gaps += batch.gap is not None
    row(f"stream: burst of {docs} (received {seen}, gaps {gaps})", burst)
    print(f"{'stream: burst throughput':<44} {seen / (last - t0):,.0f} documents/s")
    await sub.aclose()


async def admission(store: PostgresStore, seconds: float) -> None:
    for label, claim in (("without a slot claim", False), ("with a slot claim (limit 1, per key)", True)):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            intake = make_intake()
            if claim and intake.run is not None:
                intake.run.concurrency_key = f"k{n}"  # a free slot: the lock and the reads, then the insert
                intake.slot = SlotClaim(1, "forbid")
            await store.record([intake])
            n += 1
        rate = n / (time.perf_counter() - t0)
        print(f"{'admission: record() ' + label:<60} {rate:,.0f} intakes/s (one at a time)")


if __name__ == "__main__":
    asyncio.run(main())
