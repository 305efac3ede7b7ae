"""The store contract: every store (memory, sqlite, later postgres) passes these tests.

Store-specific behaviour (the SQLite single-scheduler lock, durability across reopen) is at the end.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobwire.model import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    ApiTrigger,
    Event,
    EventOutcome,
    Job,
    LocalTarget,
    Run,
    RunError,
    RunState,
    Transition,
    event_run_key,
    run_id_for,
    time_run_key,
)
from jobwire.store import (
    EventQuery,
    Fence,
    Intake,
    OutboxRow,
    PruneResult,
    PruneRule,
    RunQuery,
    SlotClaim,
    Store,
    StoreError,
    StoreLocked,
    open_store,
)
from jobwire.store.base import INTAKE_FIELDS
from jobwire.store.sqlite import SQLiteStore

from .conftest import MakeStore

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
_ids = itertools.count()


def job(name: str = "nightly", **kw: Any) -> Job:
    return Job(name=name, target=LocalTarget(command=["true"]), triggers=[ApiTrigger()], **kw)


def event(
    job_name: str | None = "nightly",
    *,
    at: datetime = T0,
    trigger: str = "api",
    scheduled_at: datetime | None = None,
    outcome: EventOutcome = EventOutcome.run,
    payload: Any = None,
    id: str | None = None,
) -> Event:
    return Event(
        id=id or f"e{next(_ids):06d}",
        job=job_name,
        trigger=trigger,
        source="api",
        received_at=at,
        scheduled_at=scheduled_at,
        payload=payload,
        outcome=outcome,
    )


def run_for(
    ev: Event, key: str | None = None, *, state: RunState = RunState.pending, at: datetime | None = None
) -> Run:
    assert ev.job is not None
    key = key or event_run_key(ev.job, ev.trigger, ev.id)
    return Run(
        id=run_id_for(key),
        key=key,
        job=ev.job,
        trigger=ev.trigger,
        event_id=ev.id,
        state=state,
        created_at=at or ev.received_at,
        scheduled_at=ev.scheduled_at,
    )


def intake(job_name: str = "nightly", key: str | None = None, **kw: Any) -> Intake:
    state = kw.pop("state", RunState.pending)
    ev = event(job_name, **kw)
    return Intake(event=ev, run=run_for(ev, key, state=state))


async def all_runs(store: Store, **filters: Any) -> list[Run]:
    out: list[Run] = []
    cursor = None
    while True:
        page = await store.list_runs(RunQuery(limit=1000, cursor=cursor, **filters))
        out += page.items
        if page.next_cursor is None:
            return out
        cursor = page.next_cursor


async def all_events(store: Store, **filters: Any) -> list[Event]:
    out: list[Event] = []
    cursor = None
    while True:
        page = await store.list_events(EventQuery(limit=1000, cursor=cursor, **filters))
        out += page.items
        if page.next_cursor is None:
            return out
        cursor = page.next_cursor


# --------------------------------------------------------------------------- jobs


async def test_jobs_crud(store: Store) -> None:
    assert await store.get_job("nightly") is None
    assert await store.list_jobs() == []
    before = datetime.now(UTC)
    saved = await store.save_job(job("nightly", description="v1"), "file:/etc/jobs.yaml")
    assert saved.origin == "file:/etc/jobs.yaml" and saved.paused is False
    assert saved.updated_at >= before - timedelta(seconds=1) and saved.updated_at.utcoffset() == timedelta(0)
    await store.save_job(job("alpha"), "api")
    got = await store.get_job("nightly")
    assert got is not None and got.job == job("nightly", description="v1")
    assert got.updated_at == saved.updated_at
    assert [s.job.name for s in await store.list_jobs()] == ["alpha", "nightly"]

    await store.save_job(job("nightly", description="v2"), "api")
    got = await store.get_job("nightly")
    assert got is not None and got.job.description == "v2" and got.origin == "api"
    assert len(await store.list_jobs()) == 2

    assert await store.delete_job("nightly") is True
    assert await store.delete_job("nightly") is False
    assert await store.get_job("nightly") is None
    assert [s.job.name for s in await store.list_jobs()] == ["alpha"]


async def test_paused_survives_redefinition(store: Store) -> None:
    assert await store.set_paused("nope", True) is None
    await store.save_job(job(), "file:a.yaml")
    paused = await store.set_paused("nightly", True)
    assert paused is not None and paused.paused is True and paused.job.name == "nightly"
    # a reload of the file (definition says nothing about pausing) keeps the pause
    again = await store.save_job(job(description="edited"), "file:a.yaml")
    assert again.paused is True
    got = await store.get_job("nightly")
    assert got is not None and got.paused is True and got.job.description == "edited"
    resumed = await store.set_paused("nightly", False)
    assert resumed is not None and resumed.paused is False
    # a definition that says paused: true pauses
    assert (await store.save_job(job(paused=True), "api")).paused is True
    got = await store.get_job("nightly")
    assert got is not None and got.paused is True
    # a new job takes its definition's flag
    assert (await store.save_job(job("fresh"), "api")).paused is False
    assert (await store.save_job(job("born-paused", paused=True), "api")).paused is True


async def test_save_jobs_and_list_jobs_reusing(store: Store) -> None:
    assert await store.save_jobs([]) == []
    await store.set_paused("b", True)  # no such job yet: nothing
    saved = await store.save_jobs([(job("b"), "file:x.yaml"), (job("a", description="v1"), "api")])
    assert [(s.job.name, s.origin) for s in saved] == [("b", "file:x.yaml"), ("a", "api")]
    await store.set_paused("b", True)
    again = await store.save_jobs([(job("b", description="v2"), "file:x.yaml")])
    assert again[0].paused is True  # a batch keeps a pause, as save_job does
    listed = await store.list_jobs()
    assert [s.job.name for s in listed] == ["a", "b"]
    assert [(s.job, s.origin, s.paused, s.updated_at) for s in again] == [
        (s.job, s.origin, s.paused, s.updated_at) for s in listed if s.job.name == "b"
    ], "what a batch returns is what the store then holds"
    # the same result whether or not a known definition is passed; an equal one may be reused,
    # a stale one never replaces what is stored
    current_b = job("b", description="v2")
    stale_a = job("a", description="old")
    reused = await store.list_jobs_reusing({"b": current_b, "a": stale_a, "zzz": job("zzz")})
    assert [(s.job, s.origin, s.paused, s.updated_at) for s in reused] == [
        (s.job, s.origin, s.paused, s.updated_at) for s in listed
    ]
    assert reused[0].job.description == "v1"
    born = await store.save_jobs([(job("c", paused=True), "api"), (job("d"), "api")])
    assert [s.paused for s in born] == [True, False]
    assert [s.paused for s in await store.list_jobs() if s.job.name in "cd"] == [True, False]
    # delete_jobs: the named ones go, an unknown name is no error, the others stay
    await store.delete_jobs([])
    await store.delete_jobs(["c", "nope", "a"])
    assert [s.job.name for s in await store.list_jobs()] == ["b", "d"]
    # a name twice in one batch: as one save_job after the other, the later definition wins
    twice = await store.save_jobs([(job("e", description="1"), "api"), (job("e", description="2"), "api")])
    assert [s.job.description for s in twice] == ["1", "2"]
    got = await store.get_job("e")
    assert got is not None and got.job.description == "2"


# --------------------------------------------------------------------------- record


async def test_record_one(store: Store) -> None:
    i = intake(payload={"file": "a.csv", "n": [1, 2.5, None, True]})
    [rec] = await store.record([i])
    assert rec.event.outcome == EventOutcome.run
    assert i.run is not None
    assert rec.event.run_id == i.run.id
    assert rec.run == i.run
    assert await store.get_run(i.run.id) == i.run
    stored_event = await store.get_event(i.event.id)
    assert stored_event == rec.event
    assert stored_event is not None and stored_event.payload == {"file": "a.csv", "n": [1, 2.5, None, True]}
    assert await store.get_run("r-unknown") is None
    assert await store.get_event("e-unknown") is None
    assert await store.record([]) == []


async def test_record_batch_in_order(store: Store) -> None:
    batch = [intake(at=T0 + timedelta(seconds=n)) for n in range(50)]
    recorded = await store.record(batch)
    assert [r.event.id for r in recorded] == [i.event.id for i in batch]
    assert [r.run for r in recorded] == [i.run for i in batch]
    assert all(r.event.outcome == EventOutcome.run for r in recorded)
    assert len(await all_runs(store)) == 50
    assert len(await all_events(store)) == 50


async def test_duplicate_key_across_batches(store: Store) -> None:
    key = time_run_key("nightly", "cron", T0)
    [first] = await store.record([intake(key=key, scheduled_at=T0)])
    assert first.run is not None
    # the run moves on before the repeat arrives: the duplicate points at the run as stored
    moved = first.run.model_copy(update={"state": RunState.running, "started_at": T0 + timedelta(seconds=1)})
    await store.update_runs([moved])
    repeat = intake(key=key, scheduled_at=T0, at=T0 + timedelta(minutes=1))
    [dup] = await store.record([repeat])
    assert dup.event.outcome == EventOutcome.duplicate
    assert dup.event.run_id == first.run.id
    assert dup.event.reason is not None and first.run.id in dup.event.reason
    assert dup.run == moved
    stored = await store.get_event(repeat.event.id)
    assert stored is not None and stored.outcome == EventOutcome.duplicate and stored.run_id == first.run.id
    assert [r.id for r in await all_runs(store)] == [first.run.id]
    assert len(await all_events(store)) == 2


async def test_duplicate_key_within_one_batch(store: Store) -> None:
    key = event_run_key("nightly", "amqp", "msg-1")
    batch = [intake(key=key), intake(key="other"), intake(key=key), intake(key=key)]
    recorded = await store.record(batch)
    assert [r.event.outcome for r in recorded] == [
        EventOutcome.run, EventOutcome.run, EventOutcome.duplicate, EventOutcome.duplicate,
    ]  # fmt: skip
    assert batch[0].run is not None
    assert recorded[2].event.run_id == recorded[3].event.run_id == batch[0].run.id
    assert recorded[2].run == recorded[3].run == batch[0].run
    assert len(await all_runs(store)) == 2
    assert {e.outcome for e in await all_events(store)} == {EventOutcome.run, EventOutcome.duplicate}
    assert len(await all_events(store)) == 4


async def test_concurrent_records_make_one_run_per_key(store: Store) -> None:
    key = event_run_key("nightly", "webhook", "delivery-1")
    results = await asyncio.gather(*(store.record([intake(key=key), intake()]) for _ in range(20)))
    outcomes = [batch[0].event.outcome for batch in results]
    assert outcomes.count(EventOutcome.run) == 1 and outcomes.count(EventOutcome.duplicate) == 19
    assert len({batch[0].event.run_id for batch in results}) == 1
    assert len(await all_runs(store)) == 21
    assert len(await all_events(store)) == 40


async def test_events_always_recorded(store: Store) -> None:
    batch = [
        Intake(event=event(None, outcome=EventOutcome.invalid).model_copy(update={"reason": "unknown job"})),
        Intake(event=event("nightly", outcome=EventOutcome.filtered)),
        Intake(event=event("nightly", outcome=EventOutcome.paused)),
        intake(),
    ]
    recorded = await store.record(batch)
    assert [r.run is None for r in recorded] == [True, True, True, False]
    assert recorded[0].event.reason == "unknown job"
    events = await all_events(store)
    assert len(events) == 4
    assert {e.outcome for e in events} == {
        EventOutcome.invalid, EventOutcome.filtered, EventOutcome.paused, EventOutcome.run,
    }  # fmt: skip
    assert [e.id for e in await all_events(store, outcomes=[EventOutcome.invalid])] == [batch[0].event.id]


async def test_batch_is_atomic(store: Store) -> None:
    ok = intake()
    clash = intake()
    clash.event = clash.event.model_copy(update={"id": ok.event.id})
    with pytest.raises(StoreError):
        await store.record([intake(), ok, clash])
    assert await all_runs(store) == []
    assert await all_events(store) == []
    # the store is usable afterwards
    assert len(await store.record([intake()])) == 1


async def test_run_must_name_a_recorded_event(store: Store) -> None:
    i = intake()
    assert i.run is not None
    i.run = i.run.model_copy(update={"event_id": "e-nowhere"})
    with pytest.raises(StoreError):
        await store.record([i])
    assert await all_runs(store) == []


# --------------------------------------------------------------------------- update, get


def full_run(run: Run) -> Run:
    plus2 = timezone(timedelta(hours=2))
    return run.model_copy(
        update={
            "state": RunState.failed,
            "attempt": 3,
            "params": {"file": "s3://b/x.csv", "n": 3, "nested": {"a": [1, "two", None]}, "ok": False},
            "not_before": T0 + timedelta(seconds=90, microseconds=999_999),
            "started_at": T0 + timedelta(seconds=1, microseconds=123_456),
            "finished_at": T0 + timedelta(minutes=5),
            "exit_code": 2,
            "http_status": 503,
            "error": RunError(message="boom", reason="BackoffLimitExceeded", code=137),
            "target_ref": "job-r123",
            "target_status": {"active": 0, "failed": 1, "conditions": [{"type": "Failed"}]},
            "history": [
                Transition(state=RunState.pending, at=T0),
                Transition(state=RunState.running, at=T0 + timedelta(seconds=1), attempt=1),
                Transition(
                    state=RunState.failed,
                    at=datetime(2026, 3, 1, 14, 5, tzinfo=plus2),
                    reason="exit 2",
                    attempt=3,
                ),
            ],
            "input_location": "s3://bucket/dev/nightly/input.csv",
            "environment": "dev",
        }
    )


async def test_a_large_batch_and_its_updates(store: Store) -> None:
    """77 intakes and 77 updates in one commit, as a burst of fires makes: every row written
    once and in order, a key repeated far from its first row found duplicate, every run's update
    applied, a refused one named, and each run's own values stay with it."""
    batch = [intake(at=T0 + timedelta(seconds=n)) for n in range(77)]
    assert batch[5].run is not None
    batch.append(intake(key=batch[5].run.key))  # a repeat of a key written 72 rows earlier
    recorded = await store.commit(batch, [])
    assert [r.event.id for r in recorded] == [i.event.id for i in batch]
    assert [r.event.outcome for r in recorded] == [EventOutcome.run] * 77 + [EventOutcome.duplicate]
    assert recorded[77].event.run_id == batch[5].run.id
    assert len(await all_runs(store)) == 77 and len(await all_events(store)) == 78
    runs = [i.run for i in batch[:77] if i.run is not None]
    ended = [r.model_copy(update={"state": RunState.succeeded, "exit_code": n}) for n, r in enumerate(runs)]
    told: list[list[str]] = []
    store.on_refused = told.append
    await store.commit([], ended)
    # run 50 goes back to running after its end: refused, named; the others are written
    again = [r.model_copy(update={"target_ref": f"t{n}"}) for n, r in enumerate(ended)]
    again[50] = runs[50].model_copy(update={"state": RunState.running})
    await store.commit([], again)
    assert told == [[runs[50].id]]
    for n, run in enumerate(runs):
        got = await store.get_run(run.id)
        assert got is not None and got.state == RunState.succeeded and got.exit_code == n
        assert got.target_ref == (None if n == 50 else f"t{n}")


async def test_update_runs_round_trip(store: Store) -> None:
    a, b = intake(), intake()
    await store.record([a, b])
    assert a.run is not None and b.run is not None
    fa = full_run(a.run)
    fb = b.run.model_copy(update={"state": RunState.running, "error": RunError(message="x", code="E1")})
    await store.update_runs([fa, fb])
    got = await store.get_run(fa.id)
    assert got == fa
    assert got is not None
    for name in ("created_at", "not_before", "started_at", "finished_at"):
        value = getattr(got, name)
        assert value.utcoffset() == timedelta(0), name  # aware, UTC
        assert value == getattr(fa, name), name
    assert got.history == fa.history and got.error == fa.error
    assert await store.get_run(fb.id) == fb
    assert await store.get_run_by_key(fa.key) == fa
    assert await store.get_run_by_key("no/such/key") is None
    # the returned run is a copy: mutating it does not change the store
    got.params["file"] = "mutated"
    assert (await store.get_run(fa.id)) == fa
    # a plain run in the same (ended) state clears fields again
    plain = a.run.model_copy(update={"state": fa.state})
    assert await store.update_runs([plain]) == []
    assert await store.get_run(a.run.id) == plain
    assert await store.update_runs([]) == []


async def test_an_update_keeps_what_the_run_got_at_intake(store: Store) -> None:
    i = intake()
    await store.record([i])
    assert i.run is not None
    other = intake()
    await store.record([other])
    assert other.run is not None
    changed = i.run.model_copy(
        update={
            "state": RunState.running,
            "job": "another",
            "trigger": "cron",
            "event_id": other.event.id,
            "concurrency_key": "customer-7",
            "created_at": T0 + timedelta(days=1),
            "scheduled_at": datetime(2026, 3, 1, 14, 0, 0, 1, tzinfo=timezone(timedelta(hours=2))),
        }
    )
    assert await store.update_runs([changed]) == []
    got = await store.get_run(i.run.id)
    assert got == i.run.model_copy(update={"state": RunState.running})
    assert set(INTAKE_FIELDS) == {"key", "job", "trigger", "event_id", "concurrency_key", "created_at", "scheduled_at"}


async def test_update_of_unknown_run_is_ignored(store: Store) -> None:
    ghost = run_for(event())
    await store.update_runs([ghost])
    assert await store.get_run(ghost.id) is None


# --------------------------------------------------------------------------- listing


async def seed_runs(store: Store) -> list[Run]:
    """23 runs over two jobs and several states, with ties on created_at (id breaks them)."""
    batch: list[Intake] = []
    states = list(RunState)
    for n in range(23):
        at = T0 + timedelta(seconds=n // 3)  # three runs per second: ties
        ev = event("a" if n % 2 else "b", at=at, trigger="api")
        batch.append(Intake(event=ev, run=run_for(ev, state=states[n % len(states)])))
    recorded = await store.record(batch)
    return [r.run for r in recorded if r.run is not None]


def newest_first(runs: list[Run]) -> list[Run]:
    return sorted(runs, key=lambda r: (r.created_at, r.id), reverse=True)


async def walk_runs(store: Store, limit: int, **filters: Any) -> list[Run]:
    seen: list[Run] = []
    cursor = None
    for _ in range(1000):
        page = await store.list_runs(RunQuery(limit=limit, cursor=cursor, **filters))
        assert len(page.items) <= limit
        seen += page.items
        if page.next_cursor is None:
            return seen
        assert len(page.items) == limit
        cursor = page.next_cursor
    raise AssertionError("paging did not end")


async def test_list_runs_paging_walks_every_row_once(store: Store) -> None:
    runs = await seed_runs(store)
    expected = [r.id for r in newest_first(runs)]
    for limit in range(1, len(runs) + 2):
        assert [r.id for r in await walk_runs(store, limit)] == expected, limit
    page = await store.list_runs(RunQuery(limit=len(runs)))
    assert page.next_cursor is None and len(page.items) == len(runs)


async def test_list_runs_filters(store: Store) -> None:
    runs = await seed_runs(store)
    terminal = sorted(TERMINAL_STATES)
    since, until = T0 + timedelta(seconds=2), T0 + timedelta(seconds=5)
    cases: list[tuple[dict[str, Any], list[Run]]] = [
        ({"job": "a"}, [r for r in runs if r.job == "a"]),
        ({"job": "zzz"}, []),
        ({"states": terminal}, [r for r in runs if r.state in TERMINAL_STATES]),
        ({"states": []}, []),
        ({"since": since}, [r for r in runs if r.created_at >= since]),
        ({"until": until}, [r for r in runs if r.created_at < until]),
        (
            {"job": "b", "states": [RunState.queued, RunState.pending], "since": since, "until": until},
            [
                r
                for r in runs
                if r.job == "b" and r.state in ("queued", "pending") and since <= r.created_at < until
            ],
        ),
        ({"event_id": runs[4].event_id}, [runs[4]]),
        ({"trigger": "api", "job": "a"}, [r for r in runs if r.job == "a"]),
        ({"trigger": "cron"}, []),
    ]
    for filters, want in cases:
        for limit in (1, 2, 5, 50):
            got = await walk_runs(store, limit, **filters)
            assert [r.id for r in got] == [r.id for r in newest_first(want)], (filters, limit)


async def test_list_events_paging_and_filters(store: Store) -> None:
    batch = [
        Intake(event=event("a" if n % 3 else "b", at=T0 + timedelta(seconds=n // 4), outcome=o))
        for n, o in zip(range(30), itertools.cycle(list(EventOutcome)), strict=False)
    ]
    await store.record(batch)
    events = [i.event for i in batch]

    def newest(evs: list[Event]) -> list[str]:
        return [e.id for e in sorted(evs, key=lambda e: (e.received_at, e.id), reverse=True)]

    cases: list[tuple[dict[str, Any], list[Event]]] = [
        ({}, events),
        ({"job": "b"}, [e for e in events if e.job == "b"]),
        ({"outcomes": [EventOutcome.duplicate, EventOutcome.invalid]},
         [e for e in events if e.outcome in ("duplicate", "invalid")]),
        ({"since": T0 + timedelta(seconds=3), "until": T0 + timedelta(seconds=6)},
         [e for e in events if T0 + timedelta(seconds=3) <= e.received_at < T0 + timedelta(seconds=6)]),
    ]  # fmt: skip
    for filters, want in cases:
        for limit in (1, 3, 7, 100):
            seen: list[Event] = []
            cursor = None
            while True:
                page = await store.list_events(EventQuery(limit=limit, cursor=cursor, **filters))
                seen += page.items
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
            assert [e.id for e in seen] == newest(want), (filters, limit)


async def test_bad_cursor_and_limit(store: Store) -> None:
    await seed_runs(store)
    for bad in ("not-a-cursor", "!!!", ""):
        if bad:
            with pytest.raises(ValueError, match="cursor"):
                await store.list_runs(RunQuery(cursor=bad))
            with pytest.raises(ValueError, match="cursor"):
                await store.list_events(EventQuery(cursor=bad))
    with pytest.raises(ValueError, match="limit"):
        await store.list_runs(RunQuery(limit=0))
    with pytest.raises(ValueError, match="limit"):
        await store.list_events(EventQuery(limit=0))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    offsets=st.lists(st.integers(0, 5), min_size=0, max_size=25),
    limit=st.integers(1, 8),
    job_filter=st.sampled_from([None, "a", "b"]),
)
async def test_paging_property(
    make_store: MakeStore, offsets: list[int], limit: int, job_filter: str | None
) -> None:
    async with make_store() as store:
        batch = []
        for n, off in enumerate(offsets):
            ev = event("a" if n % 2 else "b", at=T0 + timedelta(microseconds=off))
            batch.append(Intake(event=ev, run=run_for(ev)))
        await store.record(batch)
        want = newest_first(
            [i.run for i in batch if i.run and (job_filter is None or i.run.job == job_filter)]
        )
        got = await walk_runs(store, limit, job=job_filter)
        assert [r.id for r in got] == [r.id for r in want]


async def test_activity_counts_runs_by_bucket_and_state_and_events_by_source(store: Store) -> None:
    """The dashboard overview's one read: runs since a time per (bucket, state), events per
    (source, outcome); what is older than `since` is not counted; a bucket's edge belongs to the
    later bucket."""
    states = [RunState.succeeded, RunState.failed, RunState.running, RunState.succeeded]
    batch: list[Intake] = []
    for n in range(12):  # one run every 5 minutes from T0 - 10 min: two before the window
        at = T0 + timedelta(minutes=5 * n - 10)
        ev = event("a" if n % 2 else "b", at=at)
        batch.append(Intake(event=ev, run=run_for(ev, state=states[n % len(states)])))
    webhook = event("a", at=T0 + timedelta(minutes=1), outcome=EventOutcome.paused)
    webhook = webhook.model_copy(update={"source": "webhook"})
    batch.append(Intake(event=webhook))
    batch.append(Intake(event=event("b", at=T0 - timedelta(seconds=1), outcome=EventOutcome.invalid)))
    await store.record(batch)

    got = await store.activity(T0, timedelta(minutes=15), 3)  # [T0, T0 + 45 min)
    want: dict[tuple[int, RunState], int] = {}
    for n in range(2, 11):  # the run at T0 + 45 min is past the last bucket
        minutes = 5 * n - 10
        key = (minutes // 15, states[n % len(states)])
        want[key] = want.get(key, 0) + 1
    assert [(c.bucket, c.state, c.total) for c in got.runs] == sorted((b, s, c) for (b, s), c in want.items())
    assert [tuple(c) for c in got.events] == [
        ("api", EventOutcome.run, 10),
        ("webhook", EventOutcome.paused, 1),
    ]
    recent = await store.activity(T0, timedelta(minutes=15), 3, events_since=T0 + timedelta(minutes=30))
    assert recent.runs == got.runs
    assert [tuple(c) for c in recent.events] == [("api", EventOutcome.run, 4)]  # T0 + 30, 35, 40, 45
    later = await store.activity(T0 + timedelta(hours=1), timedelta(minutes=1), 60)
    assert later.runs == [] and later.events == []
    with pytest.raises(ValueError):
        await store.activity(T0, timedelta(0), 3)
    with pytest.raises(ValueError):
        await store.activity(T0, timedelta(minutes=1), 0)


async def test_last_runs_is_the_newest_run_of_each_job(store: Store) -> None:
    runs = await seed_runs(store)  # jobs a and b, ties on created_at broken by id
    got = await store.last_runs(["a", "b", "nope"])
    assert set(got) == {"a", "b"}
    for name in ("a", "b"):
        assert got[name] == newest_first([r for r in runs if r.job == name])[0]
    assert await store.last_runs([]) == {}


async def test_active_runs(store: Store) -> None:
    runs = await seed_runs(store)
    active = await store.active_runs()
    want = sorted(
        (r for r in runs if r.state in ACTIVE_STATES or r.state == RunState.queued),
        key=lambda r: (r.created_at, r.id),
    )
    assert [r.id for r in active] == [r.id for r in want]
    assert {r.state for r in active} == {RunState.queued, RunState.pending, RunState.running}
    assert active == want


async def test_pending_runs_of_an_owner_oldest_first_from_a_cursor(store: Store) -> None:
    """`pending_runs`: the launch backlog's runs kept in the store (engine/spill.py)."""
    states = list(RunState)
    mine: list[Intake] = []
    theirs: list[Intake] = []
    for n in range(30):
        at = T0 + timedelta(seconds=n // 3)  # ties on created_at: the id breaks them
        ev = event("a", at=at, trigger="api")
        state = RunState.pending if n % 3 else states[n % len(states)]
        (theirs if n % 7 == 0 else mine).append(Intake(event=ev, run=run_for(ev, state=state)))
    await store.commit(mine, [], fence=Fence("r1"))
    await store.commit(theirs, [], fence=Fence("r2"))
    runs = [i.run for i in mine if i.run is not None]
    want = sorted((r for r in runs if r.state == RunState.pending), key=lambda r: (r.created_at, r.id))
    assert len(want) >= 15

    for limit in (2, 3, 7, 100):
        seen: list[str] = []
        after = None
        for _ in range(100):
            page, after = await store.pending_runs("r1", after, limit)
            assert all(r.state == RunState.pending for r in page)
            seen += [r.id for r in page if r.id not in seen]  # from `after` on: the last row again
            if after is None:
                break
            assert not page or after >= (page[-1].created_at, page[-1].id)  # the last row read
        assert seen == [r.id for r in want], limit

    # the rows come whole, and from a given run on
    page, _ = await store.pending_runs("r1", (want[5].created_at, want[5].id), 100)
    assert page == want[5:]
    # another replica's runs are its own
    others, _ = await store.pending_runs("r2", None, 100)
    assert {r.id for r in others} == {
        i.run.id for i in theirs if i.run is not None and i.run.state == RunState.pending
    }
    # a run that is pending no more is not returned
    ended = want[0].model_copy(update={"state": RunState.succeeded})
    await store.update_runs([ended])
    page, _ = await store.pending_runs("r1", None, 100)
    assert [r.id for r in page] == [r.id for r in want[1:]]


async def test_last_fire(store: Store) -> None:
    assert await store.last_fire("nightly", "cron") is None
    fires = [T0 + timedelta(minutes=n) for n in (3, 1, 2)]
    batch = [
        intake(
            key=time_run_key("nightly", "cron", f),
            trigger="cron",
            scheduled_at=f,
            at=T0 + timedelta(minutes=5),
        )
        for f in fires
    ]
    batch.append(intake("nightly", trigger="cron-2", scheduled_at=T0 + timedelta(hours=9)))
    batch.append(intake("other", trigger="cron", scheduled_at=T0 + timedelta(hours=9)))
    batch.append(intake("nightly", trigger="cron"))  # no scheduled_at
    await store.record(batch)
    assert await store.last_fire("nightly", "cron") == T0 + timedelta(minutes=3)
    # a duplicate fire (e.g. a skipped or overlapping one) still counts as fired
    late = T0 + timedelta(minutes=4)
    await store.record(
        [Intake(event=event("nightly", trigger="cron", scheduled_at=late, outcome=EventOutcome.overlap))]
    )
    got = await store.last_fire("nightly", "cron")
    assert got == late and got.utcoffset() == timedelta(0)


async def test_last_fires_is_last_fire_of_every_trigger(store: Store) -> None:
    assert await store.last_fires() == {}
    fires = [
        (j, t, T0 + timedelta(minutes=m)) for j in ("a", "b") for t in ("cron", "every") for m in (2, 7, 1)
    ]
    batch = [
        intake(j, key=time_run_key(j, t, f), trigger=t, scheduled_at=f, at=T0 + timedelta(hours=1))
        for j, t, f in fires
    ]
    batch.append(intake("c", trigger="cron", scheduled_at=T0 - timedelta(days=3)))
    batch.append(intake("c", trigger="api"))  # not a time trigger: no scheduled_at, not listed
    await store.record(batch)
    # a fire that made no run (paused, overlap) counts; an event without a job is not listed
    late = T0 + timedelta(minutes=9)
    await store.record(
        [
            Intake(event=event("b", trigger="every", scheduled_at=late, outcome=EventOutcome.paused)),
            Intake(event=event(None, trigger="cron", scheduled_at=late, outcome=EventOutcome.invalid)),
        ]
    )
    got = await store.last_fires()
    assert got == {
        ("a", "cron"): T0 + timedelta(minutes=7),
        ("a", "every"): T0 + timedelta(minutes=7),
        ("b", "cron"): T0 + timedelta(minutes=7),
        ("b", "every"): late,
        ("c", "cron"): T0 - timedelta(days=3),
    }
    assert all(t.utcoffset() == timedelta(0) for t in got.values())
    for (j, t), when in got.items():
        assert await store.last_fire(j, t) == when


# --------------------------------------------------------------------------- retention


async def test_prune_keep_n_and_ttl(store: Store) -> None:
    """10 runs one hour apart; ttl cut-off after run 6; keep 3 newest. Active runs survive."""
    batch = []
    for n in range(10):
        state = RunState.running if n in (1, 8) else RunState.succeeded if n % 2 else RunState.failed
        batch.append(intake("nightly", at=T0 + timedelta(hours=n), state=state))
    batch.append(intake("other", at=T0, state=RunState.succeeded))  # another job: untouched
    await store.record(batch)
    runs = [i.run for i in batch if i.run is not None]
    cutoff = T0 + timedelta(hours=6, minutes=30)  # runs 0..6 are past the ttl

    result = await store.prune("nightly", keep=3, older_than=cutoff)
    # kept: 7,8,9 (newest 3 — also younger than the ttl), 1 (running). Deleted: 0,2,3,4,5,6.
    deleted = {runs[n].id for n in (0, 2, 3, 4, 5, 6)}
    assert set(result.runs) == deleted and len(result.runs) == 6
    assert result.events == 6
    left = {r.id for r in await all_runs(store)}
    assert left == {runs[n].id for n in (1, 7, 8, 9)} | {runs[10].id}
    assert len(await all_events(store, job="nightly")) == 4
    assert len(await all_events(store, job="other")) == 1
    # idempotent
    again = await store.prune("nightly", keep=3, older_than=cutoff)
    assert again.runs == [] and again.events == 0


async def test_prune_keep_holds_even_past_ttl(store: Store) -> None:
    batch = [intake(at=T0 + timedelta(minutes=n), state=RunState.succeeded) for n in range(5)]
    await store.record(batch)
    result = await store.prune("nightly", keep=2, older_than=T0 + timedelta(days=365))
    assert len(result.runs) == 3 and result.events == 3
    assert [r.id for r in await all_runs(store)] == [i.run.id for i in batch[3:][::-1] if i.run]
    # keep counts runs in any state: a newer active run is one of the kept
    newer = intake(at=T0 + timedelta(hours=1), state=RunState.running)
    await store.record([newer])
    result = await store.prune("nightly", keep=2, older_than=T0 + timedelta(days=365))
    assert batch[3].run is not None and result.runs == [batch[3].run.id]
    result = await store.prune("nightly", keep=0, older_than=T0 + timedelta(days=365))
    assert batch[4].run is not None and result.runs == [batch[4].run.id]
    assert [r.id for r in await all_runs(store)] == [newer.run.id if newer.run else ""]


async def test_prune_ttl_holds_even_beyond_keep(store: Store) -> None:
    batch = [intake(at=T0 + timedelta(minutes=n), state=RunState.cancelled) for n in range(5)]
    await store.record(batch)
    result = await store.prune("nightly", keep=0, older_than=T0 + timedelta(minutes=2))
    assert sorted(result.runs) == sorted(i.run.id for i in batch[:2] if i.run)
    assert len(await all_runs(store)) == 3


async def test_prune_never_deletes_active_runs(store: Store) -> None:
    batch = [intake(at=T0 + timedelta(minutes=n), state=s) for n, s in enumerate(RunState)]
    await store.record(batch)
    result = await store.prune("nightly", keep=0, older_than=T0 + timedelta(days=1))
    by_id = {i.run.id: i.run.state for i in batch if i.run}
    assert {by_id[r] for r in result.runs} == set(TERMINAL_STATES)
    assert {r.state for r in await all_runs(store)} == {RunState.queued, RunState.pending, RunState.running}


async def test_prune_events_keep_lineage_of_kept_runs(store: Store) -> None:
    """A duplicate event pointing at a kept run stays; one pointing at a deleted run goes; events
    without a run go once past the ttl; the newest fire of a time trigger stays (last_fire)."""
    old_key, kept_key = "nightly/amqp/m1", "nightly/amqp/m2"
    await store.record([intake(key=old_key, at=T0, state=RunState.succeeded)])
    await store.record([intake(key=kept_key, at=T0 + timedelta(minutes=1), state=RunState.succeeded)])
    dup_old = intake(key=old_key, at=T0 + timedelta(minutes=2))
    dup_kept = intake(key=kept_key, at=T0 + timedelta(minutes=3))
    filtered = Intake(event=event(outcome=EventOutcome.filtered, at=T0 + timedelta(minutes=4)))
    fire = Intake(event=event(trigger="cron", scheduled_at=T0, outcome=EventOutcome.paused, at=T0))
    older_fire = Intake(
        event=event(trigger="cron", scheduled_at=T0 - timedelta(minutes=1), outcome=EventOutcome.paused)
    )
    await store.record([dup_old, dup_kept, filtered, fire, older_fire])

    result = await store.prune("nightly", keep=1, older_than=T0 + timedelta(hours=1))
    assert (
        len(result.runs) == 1 and result.events == 4
    )  # old run's event, its duplicate, filtered, older fire
    left = {e.id for e in await all_events(store)}
    kept_run = await store.get_run_by_key(kept_key)
    assert kept_run is not None
    assert left == {kept_run.event_id, dup_kept.event.id, fire.event.id}
    assert await store.last_fire("nightly", "cron") == T0


@asynccontextmanager
async def sql_trace(store: Store) -> AsyncIterator[list[str] | None]:
    """The statements a SQLite store executes meanwhile (its connection's trace); None for a store
    without SQL, whose writes the tests see in its data alone."""
    if not isinstance(store, SQLiteStore):
        yield None
        return
    seen: list[str] = []
    conn = store._conn
    assert conn is not None
    await store._call(conn.set_trace_callback, lambda sql: seen.append(" ".join(sql.split())))
    try:
        yield seen
    finally:
        await store._call(conn.set_trace_callback, None)


def writes(statements: list[str]) -> list[str]:
    return [s for s in statements if s.upper().startswith(("BEGIN IMMEDIATE", "DELETE", "INSERT", "UPDATE"))]


async def snapshot(store: Store) -> tuple[list[Run], list[Event]]:
    return await all_runs(store), await all_events(store)


async def test_prune_jobs_applies_each_jobs_rule_in_one_transaction(store: Store) -> None:
    """Three jobs, five finished runs each one minute apart; one call, each job its own keep/ttl."""
    batch = [
        intake(j, at=T0 + timedelta(minutes=n), state=RunState.succeeded) for j in "abcd" for n in range(5)
    ]
    await store.record(batch)
    runs = {j: [i.run.id for i in batch if i.run and i.run.job == j] for j in "abcd"}
    rules = [
        PruneRule("a", 1, T0 + timedelta(days=1)),  # keep decides: 4 go
        PruneRule("b", 10, T0 + timedelta(days=1)),  # keep holds all
        PruneRule("c", 0, T0 + timedelta(minutes=2)),  # ttl decides: 2 go
        PruneRule("nobody", 0, T0 + timedelta(days=1)),  # no runs at all
    ]  # d: no rule, untouched
    async with sql_trace(store) as trace:
        result = await store.prune_jobs(rules)
    assert result.runs == sorted(runs["a"][:4] + runs["c"][:2])
    assert result.events == 6
    left = {r.id for r in await all_runs(store)}
    assert left == {runs["a"][4], *runs["b"], *runs["c"][2:], *runs["d"]}
    assert len(await all_events(store)) == len(batch) - 6
    if trace is not None:
        assert sum(s.upper().startswith("BEGIN IMMEDIATE") for s in trace) == 1, trace
    # idempotent, and the empty list is a no-op
    assert await store.prune_jobs(rules) == PruneResult()
    assert await store.prune_jobs([]) == PruneResult()


async def test_prune_jobs_writes_nothing_when_nothing_is_due(store: Store) -> None:
    old, young = T0 - timedelta(days=30), T0
    batch = [intake("kept", at=old + timedelta(minutes=n), state=RunState.failed) for n in range(3)]
    batch += [intake("young", at=young + timedelta(minutes=n), state=RunState.succeeded) for n in range(3)]
    batch += [intake("busy", at=old, state=s) for s in (RunState.queued, RunState.running)]
    fire = Intake(event=event("kept", trigger="cron", scheduled_at=old, at=old, outcome=EventOutcome.paused))
    dup = intake("young", key=batch[3].run.key if batch[3].run else None, at=old)  # points at a young run
    await store.record([*batch, fire, dup])
    rules = [
        PruneRule("kept", 3, T0),  # all three past the ttl, all among the newest 3
        PruneRule("young", 0, T0),  # none past the ttl; its old duplicate event points at a kept run
        PruneRule("busy", 0, T0 + timedelta(days=1)),  # past the ttl but active
        PruneRule("nobody", 0, T0 + timedelta(days=1)),
    ]
    before = await snapshot(store)
    async with sql_trace(store) as trace:
        result = await store.prune_jobs(rules)
    assert result == PruneResult()
    assert await snapshot(store) == before
    if trace is not None:
        assert trace, "the trace saw the reads"
        assert writes(trace) == [], trace  # no write transaction at all: no lock, no fsync


async def test_prune_jobs_never_deletes_active_runs(store: Store) -> None:
    batch = [intake(j, at=T0 + timedelta(minutes=n), state=s) for j in "ab" for n, s in enumerate(RunState)]
    await store.record(batch)
    result = await store.prune_jobs([PruneRule(j, 0, T0 + timedelta(days=1)) for j in "ab"])
    by_id = {i.run.id: i.run.state for i in batch if i.run}
    assert len(result.runs) == 2 * len(TERMINAL_STATES)
    assert {by_id[r] for r in result.runs} == set(TERMINAL_STATES)
    left = await all_runs(store)
    assert len(left) == 2 * 3
    assert {r.state for r in left} == {RunState.queued, RunState.pending, RunState.running}


@pytest.fixture
async def store_pair(make_store: MakeStore) -> AsyncIterator[tuple[Store, Store]]:
    """Two stores kept for all of a property test's examples (a fresh PostgreSQL database costs ~1 s)."""
    async with make_store() as a, make_store() as b:
        yield a, b


_examples = itertools.count()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from("abc"),  # job
            st.integers(0, 8),  # minute
            st.sampled_from(list(RunState)),
            st.sampled_from(["run", "dup", "no-run", "fire"]),
        ),
        max_size=40,
    ),
    rules=st.dictionaries(st.sampled_from("abcx"), st.tuples(st.integers(0, 4), st.integers(0, 10))),
)
async def test_prune_jobs_equals_prune_per_job(
    store_pair: tuple[Store, Store],
    rows: list[tuple[str, int, RunState, str]],
    rules: dict[str, tuple[int, int]],
) -> None:
    """Whatever the data: one prune_jobs call leaves what `prune` job by job leaves, and says so.

    Both stores live across the examples; each example's jobs have names of their own, so an example
    sees only its own rows in what a prune returns, and the two stores stay equal throughout."""
    one_by_one, batched = store_pair
    ex = f"e{next(_examples)}-"
    batch: list[Intake] = []
    keys: dict[str, list[str]] = {}
    for j0, minute, state, kind in rows:
        j = ex + j0
        at = T0 + timedelta(minutes=minute)
        if kind == "dup" and keys.get(j):
            batch.append(intake(j, key=keys[j][minute % len(keys[j])], at=at))
        elif kind == "no-run":
            batch.append(Intake(event=event(j, at=at, outcome=EventOutcome.filtered)))
        elif kind == "fire":
            ev = event(j, at=at, trigger="cron", scheduled_at=at - timedelta(seconds=1))
            batch.append(Intake(event=ev, run=run_for(ev, state=state)))
        else:
            batch.append(intake(j, at=at, state=state))
        if batch[-1].run is not None:
            keys.setdefault(j, []).append(batch[-1].run.key)
    prune_rules = [PruneRule(ex + j, keep, T0 + timedelta(minutes=m)) for j, (keep, m) in rules.items()]
    for store in (one_by_one, batched):
        for intk in batch:  # one by one: duplicates are duplicates of earlier batches' runs
            await store.record([intk])
    want = PruneResult()
    for rule in prune_rules:
        res = await one_by_one.prune(*rule)
        want.runs += res.runs
        want.events += res.events
    want.runs.sort()
    assert await batched.prune_jobs(prune_rules) == want
    assert await snapshot(batched) == await snapshot(one_by_one)


# --------------------------------------------------------------------------- SQLite only


def sqlite_url(tmp_path: Path, name: str = "data/jobwire.db") -> str:
    return f"sqlite:///{tmp_path / name}"


async def test_sqlite_single_scheduler_lock(tmp_path: Path) -> None:
    first = SQLiteStore(sqlite_url(tmp_path))
    await first.open()  # creates the missing folder
    try:
        second = SQLiteStore(sqlite_url(tmp_path))
        with pytest.raises(StoreLocked) as info:
            await second.open()
        message = str(info.value)
        assert f"pid {os.getpid()}" in message
        assert str(tmp_path / "data" / "jobwire.db") in message
        assert "JOBWIRE_DATA_DIR" in message
        # several replicas: the message points at PostgreSQL
        assert "several replicas, use PostgreSQL" in message and "JOBWIRE_DATABASE_URL=postgresql://" in message
        assert (tmp_path / "data" / "jobwire.db.lock").read_text().strip() == str(os.getpid())
        # the failed attempt did not disturb the holder
        await first.save_job(job(), "api")
    finally:
        await first.close()
    # after close, the next scheduler gets in
    await second.open()
    try:
        assert await second.get_job("nightly") is not None
    finally:
        await second.close()


async def test_sqlite_data_survives_reopen(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    store = SQLiteStore(url)
    await store.open()
    i = intake(payload={"k": "v"})
    assert i.run is not None
    await store.save_job(job(), "file:jobs.yaml")
    await store.set_paused("nightly", True)
    await store.record([i])
    full = full_run(i.run)
    await store.update_runs([full])
    await store.close()
    await store.close()  # idempotent

    again = SQLiteStore(url)
    await again.open()
    try:
        got = await again.get_job("nightly")
        assert got is not None and got.paused and got.origin == "file:jobs.yaml"
        assert await again.get_run(full.id) == full
        stored = await again.get_event(i.event.id)
        assert stored is not None and stored.payload == {"k": "v"} and stored.run_id == full.id
        [dup] = await again.record([intake(key=i.run.key)])
        assert dup.event.outcome == EventOutcome.duplicate and dup.run == full
    finally:
        await again.close()


async def test_sqlite_pragmas_and_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///rel/dir/jobwire.db")  # relative to the working directory
    assert isinstance(store, SQLiteStore) and store.synchronous == "FULL"
    await store.open()
    try:
        assert (tmp_path / "rel" / "dir" / "jobwire.db").exists()
        assert (await store.execute("PRAGMA journal_mode")) == [("wal",)]
        assert (await store.execute("PRAGMA foreign_keys")) == [(1,)]
        assert (await store.execute("PRAGMA synchronous")) == [(2,)]  # FULL
        assert (await store.execute("PRAGMA busy_timeout"))[0][0] > 0
    finally:
        await store.close()
    normal = SQLiteStore("sqlite:///rel/n.db", synchronous="normal")
    await normal.open()
    try:
        assert (await normal.execute("PRAGMA synchronous")) == [(1,)]
    finally:
        await normal.close()
    for bad in ("sqlite://x.db", "sqlite:///", "sqlite:///:memory:"):
        with pytest.raises(StoreError):
            SQLiteStore(bad)
    with pytest.raises(StoreError, match="synchronous"):
        SQLiteStore("sqlite:///x.db", synchronous="SOMETIMES")
    with pytest.raises(StoreError, match="not open"):
        await SQLiteStore("sqlite:///y.db").get_run("r1")


# --------------------------------------------------------------------------- the outbox


async def test_outbox_rows_commit_with_their_state_change_and_come_out_in_order(store: Store) -> None:
    first = intake()
    assert first.run is not None
    rows = [OutboxRow("amqp", f'{{"n": {n}}}') for n in range(5)] + [OutboxRow("other", '{"x": 1}')]
    await store.commit([first], [], rows[:2])
    first.run.state = RunState.running
    await store.commit([], [first.run], rows[2:])
    assert await store.outbox_size("amqp") == 5 and await store.outbox_size("other") == 1
    taken = await store.outbox_take("amqp", 3)
    assert [doc for _, doc in taken] == ['{"n": 0}', '{"n": 1}', '{"n": 2}']
    assert [s for s, _ in taken] == sorted(s for s, _ in taken)
    await store.outbox_done("amqp", taken[-1][0])
    rest = await store.outbox_take("amqp", 100)
    assert [doc for _, doc in rest] == ['{"n": 3}', '{"n": 4}']
    assert all(seq > taken[-1][0] for seq, _ in rest), "sequence numbers only grow"
    assert await store.outbox_take("other", 100) == [(s, d) for s, d in await store.outbox_take("other", 1)]
    assert (await store.get_run(first.run.id)).state == RunState.running  # type: ignore[union-attr]


# --------------------------------------------------------------------------- several replicas


async def test_run_updates_are_conditional_and_the_loser_is_told(store: Store) -> None:
    """No whole-row last-writer-wins: an ended run keeps its state whoever writes after, no run goes
    back to queued; `update_runs` returns the refused ids and `commit` tells `on_refused`."""
    told: list[list[str]] = []
    store.on_refused = told.append
    a, b = intake(), intake(state=RunState.queued)
    await store.record([a, b])
    assert a.run is not None and b.run is not None
    running = a.run.model_copy(update={"state": RunState.running})
    ended = a.run.model_copy(update={"state": RunState.succeeded, "exit_code": 0})
    assert await store.update_runs([running]) == []
    assert await store.update_runs([ended]) == []
    # a replica that still thinks the run is running loses, and is told
    stale = running.model_copy(update={"target_ref": "late"})
    assert await store.update_runs([stale]) == [a.run.id]
    assert await store.get_run(a.run.id) == ended
    # the same ended state again is no conflict (a commit retried after a lost answer)
    assert await store.update_runs([ended]) == []
    # pending -> queued is refused; queued -> running (coalesced) is not; unknown runs are refused
    assert await store.update_runs([b.run]) == []  # queued -> queued: the same state
    promoted = b.run.model_copy(update={"state": RunState.running})
    ghost = b.run.model_copy(update={"id": "r-no-such-run"})
    assert sorted(await store.update_runs([promoted, ghost])) == ["r-no-such-run"]
    back = promoted.model_copy(update={"state": RunState.queued})
    assert await store.update_runs([back]) == [b.run.id]
    # through the group commit: the engine's path
    assert told == []
    await store.commit([], [stale, promoted.model_copy(update={"state": RunState.failed})])
    assert told == [[a.run.id]]
    assert (await store.get_run(b.run.id)).state == RunState.failed  # type: ignore[union-attr]
    c = intake()
    await store.commit([c], [running])
    assert told == [[a.run.id], [a.run.id]]
    assert (await store.get_run(a.run.id)) == ended


async def test_shared_secret_is_made_once_and_read_by_all(store: Store) -> None:
    """A shared store keeps one secret per name for every replica; the others have none (None)."""
    first = await store.shared_secret("callback_key")
    if not store.shared:
        assert first is None and store.bus() is None
        return
    assert first is not None and len(first) == 32
    assert await store.shared_secret("callback_key") == first
    assert await store.shared_secret("callback_key", b"x" * 32) == first  # the first value stays
    given = await store.shared_secret("other", b"y" * 32)
    assert given == b"y" * 32 and given != first


def claim(limit: int, policy: str, **kw: Any) -> Intake:
    i = intake(**kw)
    i.slot = SlotClaim(limit, policy)
    assert i.run is not None
    i.run.concurrency_key = "k"
    return i


@pytest.mark.parametrize("policy", ["forbid", "queue", "replace"])
async def test_slot_claims_are_decided_in_the_record_transaction(store: Store, policy: str) -> None:
    """A shared store decides each run's concurrency slot where every replica's runs are in view:
    beyond the limit, forbid records an overlap, queue a queued run, replace names the victims.
    The single-process stores leave that to the engine (the claim is recorded as given)."""
    a = claim(1, policy)
    (ra,) = await store.record([a])
    assert ra.run is not None and ra.run.state == RunState.pending and ra.victims == []
    b = claim(1, policy, at=T0 + timedelta(seconds=1))
    c = claim(1, policy, at=T0 + timedelta(seconds=2))  # two at once, in one batch
    rb, rc = await store.record([b, c])
    other_key = claim(1, policy)
    assert other_key.run is not None
    other_key.run.concurrency_key = "other"
    (ro,) = await store.record([other_key])
    assert ro.run is not None and ro.run.state == RunState.pending  # another key: its own slot
    if not store.shared:
        assert rb.event.outcome == rc.event.outcome == EventOutcome.run
        assert await store.claim_slot(a.run, 1)  # type: ignore[arg-type]
        return
    assert a.run is not None and b.run is not None and c.run is not None
    if policy == "forbid":
        for rec in (rb, rc):
            assert rec.run is None and rec.event.outcome == EventOutcome.overlap
            assert a.run.id in (rec.event.reason or "")
        assert await store.get_run(b.run.id) is None
        stored = await store.get_event(rb.event.id)
        assert stored is not None and stored.outcome == EventOutcome.overlap
    elif policy == "queue":
        assert rb.run is not None and rc.run is not None
        assert rb.run.state == rc.run.state == RunState.queued
        assert (await store.get_run(c.run.id)).state == RunState.queued  # type: ignore[union-attr]
        # promotion: only when a slot is free, and oldest first
        assert not await store.claim_slot(rb.run, 1)
        await store.update_runs([a.run.model_copy(update={"state": RunState.succeeded})])
        assert not await store.claim_slot(rc.run, 1), "b was queued first"
        assert await store.claim_slot(rb.run, 1)
        assert (await store.get_run(b.run.id)).state == RunState.pending  # type: ignore[union-attr]
        assert not await store.claim_slot(rc.run, 1)
    else:
        assert rb.run is not None and rb.run.state == RunState.pending and rb.victims == [a.run.id]
        assert rc.run is not None and rc.victims == [b.run.id]
    # a repeated run key stays a duplicate, whatever the slots say
    again = claim(1, policy, key=a.run.key)
    (rd,) = await store.record([again])
    assert rd.event.outcome == EventOutcome.duplicate and rd.event.run_id == a.run.id


async def test_a_run_owned_by_another_replica_is_not_written_by_it(store: Store) -> None:
    """Updates are owner-fenced too: once a run is owned by replica r1 (recorded by it, or claimed),
    a commit of replica r2 does not overwrite it, even with an allowed state change; r2 is told."""
    told: list[list[str]] = []
    store.on_refused = told.append
    await store.register_replica("r1", "all", 30)
    await store.register_replica("r2", "all", 30)
    a = intake()
    await store.commit([a], [], fence=Fence("r1"))
    assert a.run is not None
    running = a.run.model_copy(update={"state": RunState.running, "target_ref": "on-r2"})
    await store.commit([], [running], fence=Fence("r2"))
    assert told == [[a.run.id]]
    assert (await store.get_run(a.run.id)) == a.run, "r1's run is as r1 wrote it"
    await store.commit([], [running.model_copy(update={"target_ref": "on-r1"})], fence=Fence("r1"))
    assert told == [[a.run.id]]
    stored = await store.get_run(a.run.id)
    assert stored is not None and stored.state == RunState.running and stored.target_ref == "on-r1"
