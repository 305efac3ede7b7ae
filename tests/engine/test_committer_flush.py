"""`Committer.flush()` returns only once everything handed in before it is committed — also when
it is called while another transaction is in flight. Ack-after-commit stands on it: the broker
sources and the fleet's results loop ack a message after `flush()`, so a flush that returned at
the end of the *earlier* transaction acked a result whose state change was not written yet (a
kill -9 then left the run `running` with its result gone from the queue)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from jobwire.engine.committer import Committer
from jobwire.engine.metrics import Metrics
from jobwire.model import Run, RunState
from jobwire.store import Fence, Intake, OutboxRow
from jobwire.store.memory import MemoryStore
from tests.contract.test_store_contract import intake
from tests.support.waiting import eventually


class Gated(MemoryStore):
    """A store whose commits wait, one by one, for the test to open its gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gated = False
        self.entered = 0
        self.gates: list[asyncio.Event] = []

    async def commit(
        self,
        batch: list[Intake],
        updates: list[Run],
        outbox: Sequence[OutboxRow] = (),
        fence: Fence | None = None,
    ):  # type: ignore[no-untyped-def]
        if self.gated:
            gate = asyncio.Event()
            self.gates.append(gate)
            self.entered += 1
            await gate.wait()
        return await super().commit(batch, updates, outbox, fence)


async def test_a_flush_during_a_transaction_waits_for_the_next_one() -> None:
    store = Gated()
    await store.open()
    committer = Committer(store, Metrics())
    committer.start()
    try:
        a, b = intake(key="a"), intake(key="b")
        await committer.record(a)
        await committer.record(b)
        assert a.run is not None and b.run is not None
        store.gated = True
        a.run.state = RunState.running
        committer.update(a.run)  # the writer takes it: transaction 1, held at its gate
        await eventually(lambda: store.entered == 1, 5, "transaction 1 in flight")
        b.run.state = RunState.running
        committer.update(b.run)  # handed in after transaction 1 began: it goes in transaction 2
        flushed = asyncio.ensure_future(committer.flush())
        await asyncio.sleep(0)  # one turn: the flush is handed in while transaction 1 is held
        store.gates[0].set()  # transaction 1 commits (a's change only)
        await eventually(lambda: store.entered == 2, 5, "transaction 2 in flight")
        assert not flushed.done(), "flush returned before b's change (handed in before it) was committed"
        assert (await store.get_run(b.run.id)).state == RunState.pending  # type: ignore[union-attr]
        store.gates[1].set()
        await asyncio.wait_for(flushed, 5)
        assert (await store.get_run(b.run.id)).state == RunState.running  # type: ignore[union-attr]
    finally:
        store.gated = False
        for gate in store.gates:
            gate.set()
        await committer.stop()
