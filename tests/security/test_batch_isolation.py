"""Defect 3, the committer's half: a batch that fails because of one item is committed without
it — the item fails alone, its batch-mates are recorded and acknowledged, the writer keeps going.
A store that is unavailable (full disk) fails the batch as a whole and is retried, as before.

The edge refuses unstorable values before they reach the committer (`test_poison_input.py`);
these tests hand the committer such values directly, as a future bug at the edge would."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from jobwire.engine.committer import Committer
from jobwire.engine.metrics import Metrics
from jobwire.model import RunState
from jobwire.store import Intake, Recorded, RunQuery, StoreError
from jobwire.store.memory import MemoryStore
from jobwire.store.sqlite import SQLiteStore
from tests.contract.test_store_contract import intake
from tests.support.waiting import eventually


def poisoned(n: int) -> Intake:
    bad = intake(key=f"bad-{n}")
    assert bad.run is not None
    bad.run.params = {"p": "\ud800"}  # a lone surrogate: SQLite cannot encode it
    return bad


async def test_one_unstorable_item_fails_alone_and_its_batch_mates_are_recorded(tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path / 'jobwire.db'}", synchronous="NORMAL")
    await store.open()
    metrics = Metrics()
    committer = Committer(store, metrics)
    try:
        good = [intake(key=f"good-{n}") for n in range(40)]
        items = [*good[:17], poisoned(1), *good[17:], poisoned(2)]
        # enqueued before the writer starts: they all go into ONE transaction
        futures = [committer.enqueue(i) for i in items]
        committer.start()
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        assert len(failed) == 2
        assert all(isinstance(r, Recorded) for r in results[:17] + results[18:-1])
        stored = {r.key for r in (await store.list_runs(RunQuery(limit=100))).items}
        assert stored == {i.run.key for i in good if i.run is not None}
        assert metrics.store_items_refused._value.get() == 2
        assert committer.failing_since is None, "an item's fault is not the store failing"

        # a run update the store refuses is dropped (logged); the others are written
        ok_run, bad_run = good[0].run, good[1].run
        assert ok_run is not None and bad_run is not None
        ok_run.state = RunState.running
        bad_run.state = RunState.running
        bad_run.target_status = {"x": "\udfff"}
        committer.update(ok_run)
        committer.update(bad_run)
        await committer.flush()
        assert (await store.get_run(ok_run.id)).state == RunState.running  # type: ignore[union-attr]
        assert (await store.get_run(bad_run.id)).state == RunState.pending  # type: ignore[union-attr]
        # and the writer is still writing
        later = intake(key="later")
        assert isinstance(await committer.record(later), Recorded)
    finally:
        await committer.stop()
        await store.close()


class Unavailable(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.down = True
        self.attempts = 0

    async def commit(self, batch, updates):  # type: ignore[no-untyped-def]
        self.attempts += 1
        if self.down:
            raise StoreError("database or disk is full")
        return await super().commit(batch, updates)


async def test_an_unavailable_store_fails_the_batch_once_without_bisecting() -> None:
    store = Unavailable()
    await store.open()
    committer = Committer(store, Metrics())
    futures = [committer.enqueue(intake(key=f"k{n}")) for n in range(64)]
    committer.start()
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(r, StoreError) for r in results)
    assert store.attempts == 1, "a full disk is not an item's fault: no bisection"
    assert committer.failing_since is not None
    # a state update waits for the store to come back, then is written
    u = intake(key="u")
    run = u.run
    assert run is not None
    store.down = False
    await committer.record(u)
    store.down = True
    run.state = RunState.running
    committer.update(run)
    await eventually(lambda: store.attempts >= 4, 5, "the update to be retried")
    store.down = False
    await eventually(lambda: committer.failing_since is None, 5, "writes to succeed again")
    await committer.flush()
    assert (await store.get_run(run.id)).state == RunState.running  # type: ignore[union-attr]
    await committer.stop()


@pytest.mark.parametrize(
    ("error", "unavailable"),
    [
        (StoreError("x: database or disk is full"), True),
        (OSError(28, "No space left on device"), True),
        (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), False),
        (OverflowError("Python int too large to convert to SQLite INTEGER"), False),
    ],
)
def test_sqlite_tells_store_failures_from_item_failures(
    tmp_path: Path, error: Exception, unavailable: bool
) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path / 'jobwire.db'}")
    assert store.unavailable(error) is unavailable
