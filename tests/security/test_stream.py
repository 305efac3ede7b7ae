"""Defect 9 (stream): the status hub keeps one bounded ring read by every subscriber at its own
cursor; a subscriber that falls behind is told exactly what it missed instead of losing it."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobwire.engine.metrics import Metrics
from jobwire.engine.ring import Gap, Ring
from jobwire.engine.status import StatusHub
from jobwire.model import StatusBlock, StatusDocument, utcnow
from tests.support.server import Server
from tests.support.waiting import eventually, eventually_sync


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


# --------------------------------------------------------------------------- over a real `jobwire serve`

STREAM_JOBS = """
jobs:
  - name: ok
    target: {type: local, command: ["true"]}
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(STREAM_JOBS)
    srv = Server(tmp_path / "data", jobs, JOBWIRE_STREAM_STALL_TIMEOUT="1s").start()
    yield srv
    srv.stop()


def read_events(lines: Iterator[str], until: Callable[[list[dict[str, str]]], bool]) -> list[dict[str, str]]:
    """SSE events (`event`, `id`, `data`) from `lines` until `until(events)` holds."""
    events: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "event" in fields:
                events.append(fields)
                if until(events):
                    return events
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value
    raise AssertionError(f"the stream ended after {len(events)} events")


def succeeded(events: list[dict[str, str]]) -> list[str]:
    docs = [json.loads(e["data"]) for e in events if e["event"] == "status"]
    return [d["run_id"] for d in docs if d["action"] == "succeeded"]


def test_a_stream_client_resumes_with_last_event_id_and_misses_nothing(server: Server) -> None:
    with server.client() as api, httpx.Client(base_url=server.url + "/api/v1", timeout=30) as sse:
        runs: list[str] = []
        with sse.stream("GET", "/stream") as resp:
            lines = resp.iter_lines()
            assert next(lines) == ": connected"
            runs += [api.post("/jobs/ok/runs", json={}).json()["id"] for _ in range(20)]
            first = read_events(lines, lambda ev: len(ev) >= 10)
        last_id = first[-1]["id"]
        runs += [api.post("/jobs/ok/runs", json={}).json()["id"] for _ in range(20)]
        with sse.stream("GET", "/stream", headers={"Last-Event-ID": last_id}) as resp:
            rest = read_events(resp.iter_lines(), lambda ev: len(set(succeeded(first + ev))) == 40)
    everything = first + rest
    assert "lagged" not in {e["event"] for e in everything}
    ids = [int(e["id"]) for e in everything]
    assert ids == sorted(set(ids)), "sequence numbers strictly increase across the reconnect"
    assert sorted(succeeded(everything)) == sorted(runs), "each run's end arrived exactly once"


def metric(server: Server, name: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_a_stream_client_that_stops_reading_is_disconnected(server: Server) -> None:
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", server.port))
    stalled.sendall(b"GET /api/v1/stream HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        eventually_sync(lambda: metric(server, "jobwire_stream_clients") == 1, 10, "the stream client")
        deadline = time.monotonic() + 90
        with server.client() as api:
            # documents pile up in the never-read socket until a write waits longer than 1 s
            while metric(server, "jobwire_stream_stalled_total") < 1:
                assert time.monotonic() < deadline, "the stalled client was never disconnected"
                for _ in range(50):
                    api.post("/jobs/ok/runs", json={})
        eventually_sync(lambda: metric(server, "jobwire_stream_clients") == 0, 10, "the client to be dropped")
        # the API still answers, and a new stream client gets documents
        with httpx.Client(base_url=server.url + "/api/v1", timeout=30) as sse, sse.stream("GET", "/stream") as resp:
            lines = resp.iter_lines()
            assert next(lines) == ": connected"
            with server.client() as api:
                api.post("/jobs/ok/runs", json={})
            assert read_events(lines, lambda ev: len(ev) >= 1)
    finally:
        stalled.close()
