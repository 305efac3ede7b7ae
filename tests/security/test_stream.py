"""Defect 9 (stream): the status hub keeps one bounded ring read by every subscriber at its own
cursor; a subscriber that falls behind is told exactly what it missed instead of losing it."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from jobwire.engine.metrics import Metrics
from jobwire.engine.ring import Gap, Ring
from jobwire.engine.status import StatusHub
from jobwire.model import StatusBlock, StatusDocument, utcnow
from tests.support.waiting import eventually


def doc(i: int, job: str = "j") -> StatusDocument:
    return StatusDocument(
        name=job,
        action="running",
        status=StatusBlock(active=1),
        run_id=f"r{i}",
        event_id="e",
        job=job,
        attempt=1,
        time=utcnow(),
    )


@given(
    capacity=st.integers(1, 20),
    ops=st.lists(st.sampled_from(["append", "skip", "read"]), max_size=80),
    limit=st.integers(1, 7),
)
def test_ring_every_reader_gets_each_item_once_or_a_gap_for_it(
    capacity: int, ops: list[str], limit: int
) -> None:
    ring: Ring[int] = Ring(capacity, base=100)
    cursor = ring.last
    seen: list[int] = []
    for op in ops:
        if op == "append":
            ring.append(ring.last + 1)
        elif op == "skip":
            ring.skip()
        else:
            gap, items, cursor = ring.read(cursor, limit)
            if gap is not None:
                seen.extend(range(gap.first, gap.last + 1))
            seen.extend(items)
        assert 0 <= len(ring) <= capacity
    while cursor < ring.last:
        gap, items, cursor = ring.read(cursor, limit)
        if gap is not None:
            seen.extend(range(gap.first, gap.last + 1))
        seen.extend(items)
    assert seen == list(range(100, ring.last + 1))  # every sequence number exactly once, in order


def test_ring_reports_the_gap_of_a_reader_that_fell_behind() -> None:
    ring: Ring[str] = Ring(3)
    for s in "abcde":
        ring.append(s)
    assert ring.read(0, 10) == (Gap(1, 2), ["c", "d", "e"], 5)
    assert ring.read(5, 10) == (None, [], 5)


async def test_a_stalled_subscriber_neither_blocks_others_nor_loses_documents_silently() -> None:
    hub = StatusHub([], Metrics(), buffer=100, wake_interval=0)
    stalled = hub.subscribe()
    live = hub.subscribe()
    got: list[str] = []

    async def read_live() -> None:
        async for d in live:
            got.append(d.run_id)
            if len(got) == 500:
                return

    reader = asyncio.create_task(read_live())
    for i in range(500):
        hub.publish(doc(i))
        if i % 50 == 49:  # the live reader keeps up (the stalled one is not waited for)
            await eventually(lambda: live.cursor == hub.ring.last, 5, "the live reader to catch up")
    await asyncio.wait_for(reader, 5)
    assert got == [f"r{i}" for i in range(500)]
    batch = await stalled.next_batch(0)
    assert batch is not None and batch.gap is not None
    assert batch.gap.missed == 400 and stalled.missed == 400
    assert [e.doc.run_id for e in batch.entries][:2] == ["r400", "r401"]
    await hub.stop()


async def test_resume_after_a_sequence_number_gets_exactly_what_followed() -> None:
    hub = StatusHub([], Metrics(), buffer=100, wake_interval=0)
    first = hub.subscribe()
    for i in range(10):
        hub.publish(doc(i))
    batch = await first.next_batch(0)
    assert batch is not None
    last_seen = batch.entries[3].seq
    assert b"id: %d\n" % last_seen in batch.entries[3].frame()
    resumed = hub.subscribe(after=last_seen)
    again = await resumed.next_batch(0)
    assert again is not None and again.gap is None
    assert [e.doc.run_id for e in again.entries] == [f"r{i}" for i in range(4, 10)]
    await hub.stop()
