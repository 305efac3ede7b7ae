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


async def timed(what: object) -> tuple[float, float]:
    """Wall and this process's CPU seconds of awaiting `what`."""
    wall, cpu = time.perf_counter(), time.process_time()
    await what  # type: ignore[misc]
    return time.perf_counter() - wall, time.process_time() - cpu


async def measure(store: Store, label: str, items: list[tuple[Job, str]]) -> None:
    names = [job.name for job, _ in items]

    async def save_each() -> None:
        for job, origin in items:
            await store.save_job(job, origin)

    async def delete_each() -> None:
        for name in names:
            await store.delete_job(name)

    rows = []
    for what, batch, each in (
        ("save", lambda: store.save_jobs(items), save_each),
        ("delete", lambda: store.delete_jobs(names), delete_each),
    ):
        if what == "delete":
            await store.save_jobs(items)
        one = await timed(each())
        if what == "delete":
            await store.save_jobs(items)
        else:
            await store.delete_jobs(names)
        many = await timed(batch())
        rows.append((what, one, many))
        if what == "save":
            assert len(await store.list_jobs()) == len(items)
    assert await store.list_jobs() == []
    for what, (w1, c1), (w2, c2) in rows:
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
