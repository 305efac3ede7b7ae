"""Saving and deleting many job definitions, one by one and in one batch, on each store: what a
start or a reload with a large job catalogue pays (a first start saves every job-file job; a
removed job file's jobs are deleted).

    .venv/bin/python -m bench.job_batches [--jobs 10000]

SQLite with `synchronous=FULL` (a fresh file), PostgreSQL on a fresh database (127.0.0.1:5432).
Before session 16 PostgreSQL saved one by one (`save_jobs` was the base class's loop) and both
stores deleted one by one. Not part of `python -m bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable

from jobwire.model import Job
from jobwire.store import Store
from jobwire.store.postgres import PostgresStore
from jobwire.store.sqlite import SQLiteStore
from tests.support.pgdb import fresh_database


def jobs(n: int) -> list[tuple[Job, str]]:
    return [
        (
            Job.model_validate(
                {
                    "name": f"j{i:06d}",
                    "triggers": [{"cron": f"{i % 60} 3 * * *"}],
                    "target": {"type": "local", "command": ["true"]},
                }
            ),
            "file:jobs.yaml",
        )
        for i in range(n)
    ]


async def timed(what: Awaitable[object]) -> tuple[float, float]:
    """Wall and this process's CPU seconds of awaiting `what`."""
    wall, cpu = time.perf_counter(), time.process_time()
    await what
    return time.perf_counter() - wall, time.process_time() - cpu


async def measure(store: Store, label: str, items: list[tuple[Job, str]]) -> None:
    names = [job.name for job, _ in items]

    async def save_each() -> None:
        for job, origin in items:
            await store.save_job(job, origin)

    async def delete_each() -> None:
        for name in names:
            await store.delete_job(name)

    save_one = await timed(save_each())  # each timing starts from an empty table, or a full one
    await store.delete_jobs(names)
    save_many = await timed(store.save_jobs(items))
    assert len(await store.list_jobs()) == len(items)
    delete_one = await timed(delete_each())
    await store.save_jobs(items)
    delete_many = await timed(store.delete_jobs(names))
    assert await store.list_jobs() == []
    for what, (w1, c1), (w2, c2) in (("save", save_one, save_many), ("delete", delete_one, delete_many)):
        print(
            f"{label}: {what} {len(items):,} jobs — one by one {w1:.2f} s ({c1:.2f} s CPU here), "
            f"in one batch {w2:.3f} s ({c2:.3f} s CPU here)"
        )


async def main(n: int) -> None:
    items = jobs(n)
    with tempfile.TemporaryDirectory() as folder:
        sqlite = SQLiteStore(f"sqlite:///{folder}/jobwire.db")
        await sqlite.open()
        try:
            await measure(sqlite, "SQLite (synchronous=FULL)", items)
        finally:
            await sqlite.close()
    async with fresh_database() as url:
        pg = PostgresStore(url, auto_migrate=True)
        await pg.open()
        try:
            await measure(pg, "PostgreSQL", items)
        finally:
            await pg.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    asyncio.run(main(parser.parse_args().jobs))
