"""PostgreSQL's group commit is ONE statement (`commit_batch`, store/sql/postgres/commit.sql): the
fence, the runs, the events, the state changes and the outbox rows in one round trip, no
transaction. These tests count the pool's calls, and check that the cases that take the slower
transaction (a run key already taken, next to new runs) write each thing once."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from jobwire.model import EventOutcome, RunState
from jobwire.store import LEADER, Fence, Fenced, OutboxRow
from jobwire.store.postgres import SAVE_CHUNK, PostgresStore

from .conftest import postgres_store
from .test_store_contract import all_events, all_runs, intake, job

LONG = 30.0


@pytest.fixture
async def pg(tmp_path: Path) -> AsyncIterator[PostgresStore]:
    store = await postgres_store(tmp_path)
    assert isinstance(store, PostgresStore)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """The statements the store's connections ran (`fetch`, `execute`, … one round trip each;
    BEGIN and COMMIT are `execute`s too) and the transactions it began (`begin`)."""
    seen: Counter[str] = Counter()
    patches = [(asyncpg.connection.Connection, n, n) for n in ("fetch", "execute", "fetchrow", "fetchval")]
    for cls, attr, label in [*patches, (asyncpg.transaction.Transaction, "start", "begin")]:
        orig = getattr(cls, attr)

        def counted(self: Any, *args: Any, _orig: Any = orig, _label: str = label, **kw: Any) -> Any:
            seen[_label] += 1
            return _orig(self, *args, **kw)

        monkeypatch.setattr(cls, attr, counted)
    return seen


async def test_a_fenced_batch_with_updates_and_outbox_is_one_statement(
    pg: PostgresStore, calls: Counter[str]
) -> None:
    lease = await pg.acquire_lease(LEADER, "a", LONG)
    assert lease is not None
    earlier = intake()
    await pg.record([earlier])
    assert earlier.run is not None
    earlier.run.state = RunState.running
    batch = [intake(), intake(), intake(state=RunState.queued)]
    calls.clear()
    recorded = await pg.commit(
        batch, [earlier.run], [OutboxRow("amqp", '{"n": 1}')], fence=Fence("a", lease.token)
    )
    assert dict(calls) == {"fetch": 1}, "one round trip, no transaction"
    assert [r.event.outcome for r in recorded] == [EventOutcome.run] * 3
    assert [r.run for r in recorded] == [i.run for i in batch]
    runs = {r.id: r for r in await all_runs(pg)}
    assert len(runs) == 4 and runs[earlier.run.id].state == RunState.running
    assert len(await all_events(pg)) == 4
    assert await pg.outbox_size("amqp") == 1


async def test_a_batch_of_intakes_alone_is_one_statement(pg: PostgresStore, calls: Counter[str]) -> None:
    lease = await pg.acquire_lease(LEADER, "a", LONG)
    assert lease is not None
    batch = [intake(), intake(state=RunState.queued)]
    calls.clear()
    recorded = await pg.commit(batch, [], fence=Fence("a", lease.token))
    assert dict(calls) == {"fetch": 1}
    assert [r.run for r in recorded] == [i.run for i in batch]
    assert len(await all_runs(pg)) == 2 and len(await all_events(pg)) == 2
    with pytest.raises(Fenced):
        await pg.commit([intake()], [], fence=Fence("a", lease.token + 1))
    assert len(await all_runs(pg)) == 2 and len(await all_events(pg)) == 2


async def test_a_stale_token_writes_nothing_of_the_statement(pg: PostgresStore, calls: Counter[str]) -> None:
    lease = await pg.acquire_lease(LEADER, "a", LONG)
    assert lease is not None
    earlier = intake()
    await pg.record([earlier])
    assert earlier.run is not None
    earlier.run.state = RunState.running
    calls.clear()
    with pytest.raises(Fenced):
        await pg.commit([intake()], [earlier.run], [OutboxRow("amqp", "{}")], fence=Fence("a", lease.token + 1))
    assert dict(calls) == {"fetch": 1}
    assert [r.id for r in await all_runs(pg)] == [earlier.run.id]
    assert (await pg.get_run(earlier.run.id)).state == RunState.pending  # type: ignore[union-attr]
    assert len(await all_events(pg)) == 1 and await pg.outbox_size("amqp") == 0


@pytest.mark.parametrize("beside", [0, 2], ids=["alone", "beside-new-runs"])
async def test_a_taken_key_is_committed_once_by_the_transaction(
    pg: PostgresStore, calls: Counter[str], beside: int
) -> None:
    """The statement writes nothing when a run key is taken (alone: no run inserted; beside new
    runs: the foreign key undoes it); the transaction then writes everything once."""
    first = intake(key="k")
    await pg.record([first])
    assert first.run is not None
    first.run.state = RunState.running
    repeat = intake(key="k")
    new = [intake() for _ in range(beside)]
    calls.clear()
    recorded = await pg.commit([*new, repeat], [first.run], [OutboxRow("amqp", "{}")])
    assert calls["begin"] == 1, "the statement, then one transaction"
    assert [r.event.outcome for r in recorded] == [EventOutcome.run] * beside + [EventOutcome.duplicate]
    assert recorded[-1].event.run_id == first.run.id
    assert len(await all_runs(pg)) == 1 + beside
    assert len(await all_events(pg)) == 2 + beside
    assert await pg.outbox_size("amqp") == 1, "the outbox row once, not once per attempt"
    assert (await pg.get_run(first.run.id)).state == RunState.running  # type: ignore[union-attr]


async def test_save_jobs_is_one_transaction_of_a_few_statements(pg: PostgresStore, calls: Counter[str]) -> None:
    """A first start with many job-file jobs saves them in one transaction, one statement per
    `SAVE_CHUNK` (one by one, 100,000 took 80-94 s); a pause stored earlier survives in any chunk."""
    n = 2 * SAVE_CHUNK + 1
    await pg.save_job(job(f"j{n - 1:06}"), "api")
    await pg.set_paused(f"j{n - 1:06}", True)
    calls.clear()
    assert await pg.save_jobs([]) == [] and not calls, "a reload with nothing changed: no transaction"
    saved = await pg.save_jobs([(job(f"j{i:06}", description=f"v{i}"), "file:a.yaml") for i in range(n)])
    assert calls["begin"] == 1 and calls["fetch"] == 3, dict(calls)
    assert [s.job.name for s in saved] == [f"j{i:06}" for i in range(n)]
    assert [s.job.name for s in saved if s.paused] == [f"j{n - 1:06}"]
    async with pg._p().acquire() as conn:
        xmins = await conn.fetchval("SELECT count(DISTINCT xmin::text) FROM jobs")
        stored = await conn.fetchval("SELECT count(*) FROM jobs WHERE origin = 'file:a.yaml'")
    assert (xmins, stored) == (1, n)
    listed = {s.job.name: s for s in await pg.list_jobs()}
    assert [(s.job, s.paused, s.updated_at) for s in saved] == [
        (listed[s.job.name].job, listed[s.job.name].paused, listed[s.job.name].updated_at) for s in saved
    ]


async def test_delete_jobs_is_one_statement(pg: PostgresStore, calls: Counter[str]) -> None:
    await pg.save_jobs([(job(f"d{i}"), "file:a.yaml") for i in range(50)])
    calls.clear()
    await pg.delete_jobs([f"d{i}" for i in range(40)])
    assert dict(calls) == {"fetch": 1}
    assert sorted(s.job.name for s in await pg.list_jobs()) == [f"d{i}" for i in range(40, 50)]
