"""The launch backlog keeps at most `backlog_memory` runs in memory; the rest wait in the store only
and are read back, oldest first, as places free (engine/spill.py). Every run still runs exactly
once; a cancel reaches a run kept in the store; a stop leaves them pending for the next start."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

from jobwire.config import Settings
from jobwire.engine import Engine
from jobwire.model import Job, RunState
from jobwire.store.postgres import PostgresStore
from jobwire.targets.base import Outcome, RunContext, Target
from tests.support.pgdb import fresh_database
from tests.support.waiting import eventually

LIMIT, MEMORY, RUNS = 2, 8, 60


class Gated(Target):
    """At most LIMIT at once (the engine's launch limit); each attempt waits for the gate."""

    kind = "local"
    launch_limit: ClassVar[int | None] = LIMIT
    gate: asyncio.Event
    executed: Counter[str]
    most: int

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.gate = asyncio.Event()
        self.executed = Counter()
        self.running = self.most = 0

    async def execute(self, ctx: RunContext) -> Outcome:
        self.executed[ctx.run.id] += 1
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await ctx.started(ctx.run.id)
            await self.gate.wait()
            return Outcome(RunState.succeeded)
        finally:
            self.running -= 1


def engine(tmp_path: Path) -> tuple[Engine, Gated]:
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path / "d",
        backlog_memory=MEMORY,
        record_ahead=60,
        shutdown_grace=timedelta(seconds=0.2),
    )
    eng = Engine(settings)
    target = eng.targets["local"] = Gated(settings)
    return eng, target


JOB = Job.model_validate({"name": "j", "target": {"type": "local", "command": ["true"]}})


async def test_runs_beyond_the_memory_bound_wait_in_the_store_and_each_runs_once(tmp_path: Path) -> None:
    eng, target = engine(tmp_path)
    await eng.start()
    try:
        await eng.put_job(JOB)
        ids = []
        for _ in range(RUNS):
            adm = await eng.trigger("j", {})
            assert adm.run is not None
            ids.append(adm.run.id)
        backlog = eng.attempts.backlog
        await eventually(lambda: backlog.held == MEMORY and backlog.stored == RUNS - LIMIT - MEMORY, 10)
        # a fire recorded ahead of its due time, newer than the runs in the store: pending in the
        # store and in memory (waiting for its time); reading the store back must pass it by
        due = datetime.now(UTC) + timedelta(seconds=50)
        await eng.put_job(Job.model_validate({**JOB.model_dump(), "name": "later", "triggers": [{"type": "at", "at": due}]}))
        ahead = await eventually(lambda: next((r for r in eng.runs.values() if r.job == "later"), None), 10)
        assert ahead.state == RunState.pending
        # memory holds the places' runs and MEMORY waiting ones; the rest are only in the store
        assert len(eng.runs) == LIMIT + MEMORY + 1  # and the fire recorded ahead
        state = backlog.summary()["local"]
        assert (state["waiting"], state["in_memory"], state["in_store"]) == (
            RUNS - LIMIT,
            MEMORY,
            RUNS - LIMIT - MEMORY,
        )
        health = eng.health()
        assert health["launch_backlog"]["local"]["in_store"] == RUNS - LIMIT - MEMORY

        # a run kept in the store is cancelled there: it never runs
        last = ids[-1]
        assert last not in eng.runs
        cancelled = await eng.cancel(last)
        assert cancelled.state == RunState.cancelled
        assert (await eng.get_run(last)).state == RunState.cancelled

        target.gate.set()

        async def all_ended() -> bool:
            runs = [await eng.get_run(i) for i in ids]
            return all(r.state.terminal for r in runs)

        await eventually(all_ended, 30, "every run ended")
        states = Counter([(await eng.get_run(i)).state for i in ids])
        assert states == {RunState.succeeded: RUNS - 1, RunState.cancelled: 1}
        assert set(target.executed) == set(ids) - {last}  # the fire ahead did not start early
        assert max(target.executed.values()) == 1  # exactly once each
        assert target.most <= LIMIT
        assert (backlog.held, backlog.stored, backlog.cursor) == (0, 0, None)
        assert list(eng.runs) == [ahead.id]
    finally:
        target.gate.set()
        await eng.stop()


async def test_runs_kept_in_the_store_at_a_stop_run_at_the_next_start(tmp_path: Path) -> None:
    eng, target = engine(tmp_path)
    await eng.start()
    ids = []
    try:
        await eng.put_job(JOB)
        for _ in range(30):
            adm = await eng.trigger("j", {})
            assert adm.run is not None
            ids.append(adm.run.id)
        backlog = eng.attempts.backlog
        await eventually(lambda: backlog.stored == 30 - LIMIT - MEMORY, 10)
    finally:
        await eng.stop()  # the two running are interrupted; the others stay pending
    first = target.executed

    eng, target = engine(tmp_path)
    target.gate.set()
    await eng.start()
    try:

        async def all_ended() -> bool:
            return all([(await eng.get_run(i)).state.terminal for i in ids])

        await eventually(all_ended, 30, "every run ended after the restart")
        states = Counter([(await eng.get_run(i)).state for i in ids])
        assert states == {RunState.succeeded: 30 - LIMIT, RunState.interrupted: LIMIT}
        assert set(target.executed) | set(first) == set(ids)
        assert not set(target.executed) & set(first)  # nothing ran twice
        assert max(target.executed.values()) == 1
    finally:
        await eng.stop()


async def test_on_postgresql_a_cancel_through_another_replica_reaches_a_run_kept_in_the_store(
    tmp_path: Path,
) -> None:
    """Two replicas on one database: the runs A keeps in the store are A's alone (B reads none of
    them back), and a cancel sent to B is forwarded to A, which takes the run back and ends it."""
    async with fresh_database() as url:
        engines: list[Engine] = []
        try:
            gated: list[Gated] = []
            for n in range(2):
                settings = Settings(
                    _env_file=None,
                    data_dir=tmp_path / f"r{n}",
                    backlog_memory=MEMORY,
                    shutdown_grace=timedelta(seconds=0.2),
                )
                eng = Engine(settings, store=PostgresStore(url, pool_size=4, auto_migrate=True))
                gated.append(Gated(settings))
                eng.targets["local"] = gated[-1]
                await eng.start()
                engines.append(eng)
            a, b = engines
            await eventually(lambda: all(e.shared and e.shared.bus.connected for e in engines), 10, "LISTEN")
            await a.put_job(JOB)
            await eventually(lambda: "j" in b.jobs, 10, "the job on replica b")
            ids = []
            for _ in range(30):
                adm = await a.trigger("j", {})
                assert adm.run is not None
                ids.append(adm.run.id)
            await eventually(lambda: a.attempts.backlog.stored == 30 - LIMIT - MEMORY, 10)

            last = ids[-1]
            cancelled = await b.cancel(last)
            assert cancelled.state == RunState.cancelled
            assert (await b.get_run(last)).state == RunState.cancelled

            gated[0].gate.set()
            gated[1].gate.set()

            async def all_ended() -> bool:
                return all([(await a.get_run(i)).state.terminal for i in ids])

            await eventually(all_ended, 30, "every run ended")
            assert set(gated[0].executed) == set(ids) - {last}
            assert max(gated[0].executed.values()) == 1
            assert not gated[1].executed  # B took none of A's runs
        finally:
            for eng in engines:
                await eng.stop()
