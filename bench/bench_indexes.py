"""What session 17's two store changes bought, a run's writes three ways:

* before: the two pairs of indexes merged by SQLite migration 0004 / PostgreSQL 0005 put back
  (`runs_active` + `runs_state_created` without `id`; `events_received` without `source, outcome`
  + `events_received_source`), and run ids the hash of their key alone, as before session 17;
* merged indexes: today's indexes, run ids still the hash alone;
* today: today's indexes, and run ids led by the key's time (`model.run_id_for`).

    .venv/bin/python -m bench.bench_indexes [--commits 2000] [--prefill 50000] [--rounds 2] [--no-postgres]

Each cell is a fresh store (SQLite `synchronous=FULL`, as `jobwire serve`; PostgreSQL a fresh
database on JOBWIRE_TEST_POSTGRES) holding `prefill` runs, then `commits` times: one commit of 8
intakes and the previous 8 runs' ends, and one of the 8 new runs' `running` (a run's three writes,
as 16 producers group them). The three kinds alternate. Prints wall time and this process's CPU
per pair of commits, and on SQLite the pages (WAL frames) each pair writes; on PostgreSQL most of
the work is the server's, so only its wall time says much.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.bench_ids import make
from jobwire.engine.intake import new_id
from jobwire.model import RunState, run_id_for
from jobwire.store import Intake, Store
from jobwire.store.sqlite import SQLiteStore, connect, migrate

BEFORE = (
    "DROP INDEX runs_state_created",
    "CREATE INDEX runs_active ON runs (state, created_at, id) WHERE state IN ('queued', 'pending', 'running')",
    "CREATE INDEX runs_state_created ON runs (state, created_at)",
    "DROP INDEX events_received",
    "CREATE INDEX events_received ON events (received_at, id)",
    "CREATE INDEX events_received_source ON events (received_at, source, outcome)",
)
"""Today's schema back to the indexes before the merge."""


def hashed_id(key: str) -> str:
    """A run id as before session 17: the hash of its key alone, wherever its runs land."""
    return "r" + hashlib.sha256(key.encode()).hexdigest()[:23]

FRAMES_PAIRS = 200
"""Pairs of commits over which the WAL frames (pages written) are counted."""


async def drive(store: Store, prefill: int, commits: int, ids: Callable[[str], str]) -> tuple[float, float]:
    for _ in range(prefill // 500):
        await store.record([make(new_id, ids) for _ in range(500)])
    prev: list[Intake] = []
    wall, cpu0 = 0.0, time.process_time()
    for _ in range(commits):
        batch = [make(new_id, ids) for _ in range(8)]
        running = [p.run.model_copy(update={"state": RunState.running}) for p in batch if p.run]
        ended = [p.run.model_copy(update={"state": RunState.succeeded}) for p in prev if p.run]
        t0 = time.perf_counter()
        await store.commit(batch, ended)
        await store.commit([], running)
        wall += time.perf_counter() - t0
        prev = batch
    return wall / commits, (time.process_time() - cpu0) / commits


KINDS: tuple[tuple[str, bool, Callable[[str], str]], ...] = (
    ("before", True, hashed_id),
    ("merged indexes", False, hashed_id),
    ("today", False, run_id_for),
)
"""(name, the indexes before the merge?, how run ids are made)."""


async def sqlite_cell(
    before: bool, ids: Callable[[str], str], prefill: int, commits: int
) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory(prefix="jobwire-idx-") as tmp:
        path = f"{tmp}/jobwire.db"
        if before:
            conn = connect(Path(path), "FULL")
            migrate(conn)
            for sql in BEFORE:
                conn.execute(sql)
            conn.close()
        store = SQLiteStore(f"sqlite:///{path}", synchronous="FULL")
        await store.open()
        try:
            wall, cpu = await drive(store, prefill, commits, ids)
            # pages written: the WAL emptied, then FRAMES_PAIRS pairs (fewer frames than the
            # store's checkpoint threshold, so none is folded back meanwhile)
            side = sqlite3.connect(path)
            side.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            await drive(store, 0, FRAMES_PAIRS, ids)
            frames = (Path(path + "-wal").stat().st_size - 32) / (4096 + 24) / FRAMES_PAIRS
            side.close()
            return wall, cpu, frames
        finally:
            await store.close()


async def postgres_cell(
    url: str, before: bool, ids: Callable[[str], str], prefill: int, commits: int
) -> tuple[float, float]:
    import asyncpg

    from jobwire.store.postgres import PostgresStore

    store = PostgresStore(url, auto_migrate=True)
    await store.open()
    try:
        if before:
            conn = await asyncpg.connect(url)
            try:
                for sql in BEFORE:
                    await conn.execute(sql)
            finally:
                await conn.close()
        return await drive(store, prefill, commits, ids)
    finally:
        await store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--commits", type=int, default=2000)
    ap.add_argument("--prefill", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-postgres", action="store_true")
    a = ap.parse_args()
    print(f"a run's writes as pairs of commits (8 intakes + 8 ends; 8 running), {a.prefill:,} runs before")
    for _ in range(a.rounds):
        for name, before, ids in KINDS:
            wall, cpu, frames = asyncio.run(sqlite_cell(before, ids, a.prefill, a.commits))
            print(
                f"  SQLite,     {name:<14}: {wall * 1e3:.3f} ms wall / {cpu * 1e3:.3f} ms CPU per pair,"
                f" {frames:.1f} pages written per pair"
            )
    if a.no_postgres:
        return
    from bench.bench_replicas import database

    for _ in range(a.rounds):
        for name, before, ids in KINDS:
            with database() as url:
                wall, cpu = asyncio.run(postgres_cell(url, before, ids, a.prefill, a.commits))
            print(f"  PostgreSQL, {name:<14}: {wall * 1e3:.3f} ms wall / {cpu * 1e3:.3f} ms CPU per pair")


if __name__ == "__main__":
    main()
