"""Store write throughput: `record()` of event+run intakes, by batch size and `synchronous` mode.

    .venv/bin/python bench/bench_store.py [--seconds 1.0] [--dir /tmp/x]

One "record" is one intake: an event and the run it makes, written in the batch's transaction.
Each cell runs batches for about `--seconds` (at least 3 batches) on a fresh database file.
Also prints the cost of a read (list_runs page of 50) and the memory store for comparison, and —
when PostgreSQL answers at JOBWIRE_BENCH_POSTGRES (default postgresql://postgres@127.0.0.1:5432/postgres)
— the same record() rows for the PostgreSQL store, each cell on a fresh database that is dropped after.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from jobwire.model import Event, Run, RunState, Transition, event_run_key, run_id_for
from jobwire.store import Intake, RunQuery, Store
from jobwire.store.memory import MemoryStore
from jobwire.store.sqlite import SQLiteStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)
_seq = itertools.count()


def make_intake() -> Intake:
    n = next(_seq)
    at = T0 + timedelta(microseconds=n)
    ev = Event(
        id=f"e{n:012d}",
        job="bench",
        trigger="amqp",
        source="amqp",
        received_at=at,
        payload={"file": f"s3://bucket/dev/bench/{n}.csv", "size": n},
        input_location=f"s3://bucket/dev/bench/{n}.csv",
    )
    key = event_run_key("bench", "amqp", f"msg-{n}")
    ev.run_id = run_id_for(key)  # as the engine does: the run id is known before recording
    run = Run(
        id=run_id_for(key),
        key=key,
        job="bench",
        trigger="amqp",
        event_id=ev.id,
        state=RunState.pending,
        params={"file": f"s3://bucket/dev/bench/{n}.csv"},
        created_at=at,
        history=[Transition(state=RunState.pending, at=at)],
    )
    return Intake(event=ev, run=run)


async def measure(store: Store, batch_size: int, seconds: float) -> tuple[float, float]:
    """(intakes per wall-clock second, intakes per CPU second of this process).

    The second number is what the store does when it has the CPU to itself: on a shared machine
    (other test suites running) wall-clock rates fall, CPU-time rates do not."""
    await store.open()
    try:
        await store.record([make_intake() for _ in range(batch_size)])  # warm-up
        # Intakes are built before the clock starts: making events is the sources' cost, not the store's.
        ready = [[make_intake() for _ in range(batch_size)] for _ in range(max(3, 20_000 // batch_size))]
        done = 0
        start, cpu = time.perf_counter(), time.process_time()
        for batch in ready:
            await store.record(batch)
            done += batch_size
            if done >= 3 * batch_size and time.perf_counter() - start >= seconds:
                break
        return done / (time.perf_counter() - start), done / (time.process_time() - cpu)
    finally:
        await store.close()


async def measure_reads(store: Store, n: int = 200) -> float:
    await store.open()
    try:
        for _ in range(20):
            await store.record([make_intake() for _ in range(500)])
        start = time.perf_counter()
        for _ in range(n):
            await store.list_runs(RunQuery(job="bench", limit=50))
        return (time.perf_counter() - start) / n * 1e3
    finally:
        await store.close()


async def measure_updates(store: Store, runs: int = 8_000, batch_size: int = 16) -> float:
    """CPU µs per run update: every run of `runs` recorded, then `update_runs` in batches of
    `batch_size` to `running` and then `succeeded` (a run's life after its intake)."""
    await store.open()
    try:
        intakes = [make_intake() for _ in range(runs)]
        for i in range(0, runs, 500):
            await store.record(intakes[i : i + 500])
        all_runs = [i.run for i in intakes if i.run is not None]
        cpu = time.process_time()
        for state in (RunState.running, RunState.succeeded):
            for r in all_runs:
                r.state = state
                r.history.append(Transition(state=state, at=T0))
            for i in range(0, runs, batch_size):
                await store.update_runs(all_runs[i : i + batch_size])
        return (time.process_time() - cpu) / (2 * runs) * 1e6
    finally:
        await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument(
        "--dir", type=Path, default=None, help="folder for the database files (default: a temp dir)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        sizes = (1, 10, 100, 1000)
        modes = ("FULL", "NORMAL")
        print(
            f"record(): intakes/s (one intake = 1 event + 1 run = 2 rows), up to {args.seconds:.1f}s per cell"
        )
        print("each cell: wall-clock rate (rate per CPU-second of this process, i.e. on an idle machine)")
        heads = [f"{m} intakes/s" for m in modes] + ["NORMAL rows/s", "memory intakes/s"]
        print(f"{'batch':>6} | " + " | ".join(f"{h:>20}" for h in heads))
        print("-" * 6 + "-+-" + "-+-".join("-" * 20 for _ in heads))
        for i, size in enumerate(sizes):
            cells: list[tuple[float, float]] = []
            for mode in modes:
                store = SQLiteStore(f"sqlite:///{tmp}/b{i}-{mode}.db", synchronous=mode)
                cells.append(await measure(store, size, args.seconds))
            cells.append((2 * cells[-1][0], 2 * cells[-1][1]))
            cells.append(await measure(MemoryStore(), size, args.seconds / 2))
            print(f"{size:>6} | " + " | ".join(f"{w:>9,.0f} ({c:>7,.0f})" for w, c in cells))
        ms = await measure_reads(SQLiteStore(f"sqlite:///{tmp}/reads.db", synchronous="NORMAL"))
        print(f"\nlist_runs(job, limit=50) over 10,000 runs: {ms:.2f} ms per page")
        us = await measure_updates(SQLiteStore(f"sqlite:///{tmp}/updates.db", synchronous="FULL"))
        print(f"update_runs(), batches of 16, running then succeeded: {us:.1f} µs of CPU per run update")
    await postgres_rows(args.seconds)


PG_ADMIN = os.environ.get("JOBWIRE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


async def postgres_rows(seconds: float) -> None:
    """record() on the PostgreSQL store by batch size: SQLite's table's rows, against PostgreSQL."""
    try:
        import asyncpg

        from jobwire.store.postgres import PostgresStore

        admin = await asyncpg.connect(PG_ADMIN, timeout=5)
    except Exception as exc:
        print(f"\nPostgreSQL store: skipped ({type(exc).__name__}: {exc})")
        return
    print("\nPostgreSQL store (server on this machine, synchronous_commit as configured; the CPU rate")
    print("counts this process only, not the server): intakes/s, fresh database per cell")
    print(f"{'batch':>6} | {'intakes/s':>20} | {'rows/s':>20}")
    try:
        for size in (1, 10, 100, 1000):
            name = f"jwbench_{uuid.uuid4().hex[:12]}"
            await admin.execute(f'CREATE DATABASE "{name}"')
            try:
                url = f"{PG_ADMIN.rpartition('/')[0]}/{name}"
                wall, cpu = await measure(PostgresStore(url, auto_migrate=True), size, seconds)
            finally:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            print(f"{size:>6} | {wall:>9,.0f} ({cpu:>7,.0f}) | {2 * wall:>9,.0f} ({2 * cpu:>7,.0f})")
    finally:
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
