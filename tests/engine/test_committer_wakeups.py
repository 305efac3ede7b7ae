"""The writer loop's wake-ups (`Committer._signal` / `_wait`): a state change alone lingers for more
work; an intake, a flush or a link ends the linger at once and carries it; an idle loop wakes for
any hand-in; nothing handed in is left unwritten."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from jobwire.engine.committer import Committer
from jobwire.engine.metrics import Metrics
from jobwire.model import Run, RunState
from jobwire.store import Fence, Intake, OutboxRow, Recorded
from jobwire.store.memory import MemoryStore
from tests.contract.test_store_contract import intake
from tests.support.waiting import eventually


class Counting(MemoryStore):
    """A store that keeps what each commit carried: (intakes, updated run ids)."""

    def __init__(self) -> None:
        super().__init__()
        self.commits: list[tuple[int, list[str]]] = []

    async def commit(
        self,
        batch: list[Intake],
        updates: list[Run],
        outbox: Sequence[OutboxRow] = (),
        fence: Fence | None = None,
    ) -> list[Recorded]:
        self.commits.append((len(batch), [r.id for r in updates]))
        return await super().commit(batch, updates, outbox, fence)


async def started(linger: float) -> tuple[Counting, Committer]:
    store = Counting()
    await store.open()
    committer = Committer(store, Metrics())
    committer.linger = linger
    committer.start()
    return store, committer


async def turns(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_state_change_alone_lingers_and_rides_on_the_next_intake() -> None:
    store, committer = await started(linger=60.0)
    try:
        first = intake(key="first")
        await committer.record(first)
        assert first.run is not None
        first.run.state = RunState.running
        committer.update(first.run)
        committer.after_commit(lambda: None)  # not urgent either
        await turns()
        assert store.commits == [(1, [])], "a lone state change was written without lingering"
        second = intake(key="second")
        await asyncio.wait_for(committer.record(second), 5)  # ends the 60 s linger at once
        assert store.commits[-1] == (1, [first.run.id])
    finally:
        await committer.stop()


async def test_a_flush_or_a_link_ends_the_linger() -> None:
    store, committer = await started(linger=60.0)
    try:
        a, b = intake(key="a"), intake(key="b")
        await committer.record(a)
        await committer.record(b)
        assert a.run is not None and b.run is not None
        a.run.state = RunState.running
        committer.update(a.run)
        await asyncio.wait_for(committer.flush(), 5)
        assert store.commits[-1] == (0, [a.run.id])
        b.run.state = RunState.succeeded
        child = intake(key="child")
        futures = committer.link(b.run, [child])
        await asyncio.wait_for(asyncio.gather(*futures), 5)
        assert store.commits[-1] == (1, [b.run.id])
    finally:
        await committer.stop()


async def test_an_idle_loop_wakes_for_each_kind_of_hand_in() -> None:
    store, committer = await started(linger=0.0)
    try:
        a = intake(key="a")
        await committer.record(a)
        assert a.run is not None
        for state in (RunState.running, RunState.succeeded):
            await turns()  # the loop is idle again
            before = len(store.commits)
            a.run.state = state
            committer.update(a.run)
            await eventually(lambda before=before: len(store.commits) > before, 5, f"the {state} change written")
        ran: list[str] = []
        await turns()
        committer.after_commit(lambda: ran.append("after"))
        await eventually(lambda: ran == ["after"], 5, "an after-commit callback run by an idle loop")
        stored = await store.get_run(a.run.id)
        assert stored is not None and stored.state == RunState.succeeded
    finally:
        await committer.stop()
