"""What time-ordered ids buy the SQLite store: one group commit of 8 intakes and 8 run updates
(the 16-producer row's typical transaction), with event ids and generated run keys made the old way
(92 random bits) and the way `engine/intake.new_id` makes them (the wall clock's microseconds,
then 40 random bits), on an empty database and on one holding 100,000 runs.

    .venv/bin/python -m bench.bench_ids [--commits 3000] [--prefill 100000]

Each cell is a fresh database (synchronous=FULL, as `jobwire serve`); the two kinds alternate
twice. Prints wall time and this process's CPU per commit."""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime

from jobwire.engine.intake import new_id
from jobwire.model import Event, Run, RunState, Transition, event_run_key, run_id_for
from jobwire.store import Intake
from jobwire.store.sqlite import SQLiteStore

_R = random.Random()


def random_id(prefix: str) -> str:
    """Event ids and generated run keys before they were time-ordered."""
    return f"{prefix}{_R.getrandbits(92):023x}"


def make(ids: Callable[[str], str], run_ids: Callable[[str], str] = run_id_for) -> Intake:
    at = datetime.now(UTC)
    ev = Event(id=ids("e"), job="h", trigger="api", source="api", received_at=at)
    key = event_run_key("h", "api", ids("k"))
    ev.run_id = run_ids(key)
    run = Run(
        id=ev.run_id,
        key=key,
        job="h",
        trigger="api",
        event_id=ev.id,
        state=RunState.pending,
        created_at=at,
        history=[Transition(state=RunState.pending, at=at)],
    )
    return Intake(event=ev, run=run)


async def cell(ids: Callable[[str], str], prefill: int, commits: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="jobwire-ids-") as tmp:
        store = SQLiteStore(f"sqlite:///{tmp}/jobwire.db", synchronous="FULL")
        await store.open()
        try:
            for _ in range(prefill // 500):
                await store.record([make(ids) for _ in range(500)])
            prev: list[Intake] = []
            wall, cpu0 = 0.0, time.process_time()
            for _ in range(commits):
                batch = [make(ids) for _ in range(8)]
                ended = [p.run.model_copy(update={"state": RunState.succeeded}) for p in prev if p.run]
                t0 = time.perf_counter()
                await store.commit(batch, ended)
                wall += time.perf_counter() - t0
                prev = batch
            return wall / commits, (time.process_time() - cpu0) / commits
        finally:
            await store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--commits", type=int, default=3000)
    ap.add_argument("--prefill", type=int, default=100_000)
    a = ap.parse_args()
    kinds = (("random ids", random_id), ("time-ordered ids", new_id))
    print("one commit of 8 intakes + 8 updates: wall / CPU per commit")
    for prefill in (0, a.prefill):
        for name, ids in kinds * 2:
            wall, cpu = asyncio.run(cell(ids, prefill, a.commits))
            print(f"  {prefill:>7,} runs before, {name:<16}: {wall * 1e3:.3f} / {cpu * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
