"""Time fires recorded ahead of their due time (`JOBWIRE_RECORD_AHEAD`): the event and a `pending`
run are committed before the due time, the job starts at it — never before — and a job paused,
deleted or redefined meanwhile gives its run up (`cancelled`, reason `NotDue`)."""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from jobwire.config import Settings
from jobwire.engine import Engine
from jobwire.engine.dispatch import Attempts
from jobwire.engine.due import BIG
from jobwire.model import EventOutcome, Job, Run, RunState
from jobwire.store import EventQuery, RunQuery
from jobwire.targets.http import _Shot
from tests.support.fake_context import RecordingServer
from tests.support.waiting import eventually

PY = sys.executable
AHEAD = 1.5


def settings(tmp_path: Path, **kw: Any) -> Settings:
    kw.setdefault("record_ahead", AHEAD)
    return Settings(data_dir=tmp_path / "data", shutdown_grace=timedelta(seconds=5), **kw)


def stamp_job(name: str, at: datetime, marker: Path, **kw: Any) -> Job:
    """A job due once at `at` whose process appends the time it started to `marker`."""
    code = "import sys, time; open(sys.argv[1], 'a').write(repr(time.time()) + chr(10))"
    return Job.model_validate(
        {
            "name": name,
            "triggers": [{"type": "at", "at": at.isoformat()}],
            "target": {"type": "local", "command": [PY, "-c", code, str(marker)]},
            **kw,
        }
    )


def due_in(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    eng = Engine(settings(tmp_path))
    await eng.start()
    yield eng
    await eng.stop()


async def the_run(engine: Engine, job: str) -> Run:
    async def one() -> Run | None:
        items = (await engine.store.list_runs(RunQuery(job=job))).items
        return items[0] if items else None

    return await eventually(one, 10, f"the run of {job}")


async def finished(engine: Engine, run_id: str) -> Run:
    async def check() -> Run | None:
        run = await engine.get_run(run_id)
        return run if run.state.terminal else None

    return await eventually(check, 15, f"run {run_id} to finish")


async def test_recorded_ahead_it_starts_at_its_due_time_never_before(engine: Engine, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    at = due_in(AHEAD + 1.0)
    await engine.put_job(stamp_job("once", at, marker))
    run = await the_run(engine, "once")
    seen = time.time()
    assert seen < at.timestamp(), "recorded before its due time"
    assert run.state == RunState.pending and run.not_before == at and run.scheduled_at == at
    run = await finished(engine, run.id)
    assert run.state == RunState.succeeded
    assert run.started_at is not None and run.started_at >= at
    (started,) = marker.read_text().split()
    assert float(started) >= at.timestamp(), "the process began at or after the due time"
    events = (await engine.store.list_events(EventQuery(job="once"))).items
    assert [e.outcome for e in events] == [EventOutcome.run]


async def test_paused_before_its_due_time_it_is_given_up(engine: Engine, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    at = due_in(AHEAD + 0.5)
    await engine.put_job(stamp_job("p", at, marker))
    run = await the_run(engine, "p")
    assert time.time() < at.timestamp()
    await engine.pause("p")
    run = await finished(engine, run.id)
    assert run.state == RunState.cancelled
    assert run.error is not None and run.error.reason == "NotDue" and "paused" in run.error.message
    assert run.started_at is None and not marker.exists()


async def test_paused_and_resumed_before_its_due_time_it_runs_once(engine: Engine, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    at = due_in(AHEAD + 0.5)
    await engine.put_job(stamp_job("pr", at, marker))
    run = await the_run(engine, "pr")
    await engine.pause("pr")
    await engine.resume("pr")
    assert time.time() < at.timestamp()
    assert (await finished(engine, run.id)).state == RunState.succeeded
    assert len(marker.read_text().split()) == 1
    assert len((await engine.store.list_runs(RunQuery(job="pr"))).items) == 1


async def test_redefined_away_from_its_time_it_is_given_up(engine: Engine, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    at = due_in(AHEAD + 0.5)
    await engine.put_job(stamp_job("r", at, marker))
    run = await the_run(engine, "r")
    await engine.put_job(stamp_job("r", at + timedelta(hours=1), marker))
    run = await finished(engine, run.id)
    assert run.state == RunState.cancelled
    assert run.error is not None and run.error.reason == "NotDue" and "no longer fires" in run.error.message
    assert not marker.exists()
    assert len((await engine.store.list_runs(RunQuery(job="r"))).items) == 1, "the new time is not due yet"


async def test_redefined_keeping_its_time_it_runs_once_as_now_defined(engine: Engine, tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    at = due_in(AHEAD + 0.5)
    await engine.put_job(stamp_job("k", at, old))
    run = await the_run(engine, "k")
    await engine.put_job(stamp_job("k", at, new))
    assert time.time() < at.timestamp()
    assert (await finished(engine, run.id)).state == RunState.succeeded
    assert not old.exists() and len(new.read_text().split()) == 1
    events = (await engine.store.list_events(EventQuery(job="k"))).items
    assert [e.outcome for e in events] == [EventOutcome.run], "the fire is not recorded a second time"


async def test_deleted_before_its_due_time_it_is_given_up(engine: Engine, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    at = due_in(AHEAD + 0.5)
    await engine.put_job(stamp_job("d", at, marker))
    run = await the_run(engine, "d")
    await engine.delete_job("d")
    run = await finished(engine, run.id)
    assert run.state == RunState.cancelled and run.error is not None and "deleted" in run.error.message
    assert not marker.exists()


async def test_cancelled_before_its_due_time_nothing_starts(engine: Engine, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    at = due_in(AHEAD + 0.5)
    await engine.put_job(stamp_job("c", at, marker))
    run = await the_run(engine, "c")
    cancelled = await engine.cancel(run.id)
    assert cancelled.state == RunState.cancelled
    # a second job due just after proves the due time has passed without the first starting
    later = tmp_path / "later"
    await engine.put_job(stamp_job("after", at + timedelta(milliseconds=50), later))
    await finished(engine, (await the_run(engine, "after")).id)
    assert not marker.exists()
    assert (await engine.get_run(run.id)).state == RunState.cancelled


async def test_a_job_with_a_concurrency_limit_is_recorded_at_its_due_time(
    engine: Engine, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    at = due_in(AHEAD + 0.5)
    await engine.put_job(stamp_job("limited", at, marker, concurrency={"policy": "forbid"}))
    run = await the_run(engine, "limited")
    assert run.created_at >= at and run.not_before is None, "decided at its due time, not ahead"
    assert (await finished(engine, run.id)).state == RunState.succeeded


async def test_a_restart_before_its_due_time_starts_it_once_at_its_time(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    at = due_in(AHEAD + 1.5)
    first = Engine(settings(tmp_path))
    await first.start()
    try:
        await first.put_job(stamp_job("rs", at, marker))
        run = await the_run(first, "rs")
    finally:
        await first.stop()
    assert time.time() < at.timestamp(), "stopped before the due time"
    assert run.state == RunState.pending
    second = Engine(settings(tmp_path))
    await second.start()
    try:
        run = await finished(second, run.id)
        assert run.state == RunState.succeeded and run.started_at is not None and run.started_at >= at
        (started,) = marker.read_text().split()
        assert float(started) >= at.timestamp()
        assert len((await second.store.list_runs(RunQuery(job="rs"))).items) == 1
    finally:
        await second.stop()


async def test_an_http_job_is_armed_ahead_and_called_at_its_due_time(engine: Engine) -> None:
    server = await RecordingServer().start()
    try:
        at = due_in(AHEAD + 0.8)
        job = Job.model_validate(
            {
                "name": "call",
                "triggers": [{"type": "at", "at": at.isoformat()}],
                "target": {"type": "http", "url": server.url("/due"), "allow_private": True},
            }
        )
        await engine.put_job(job)
        run = await the_run(engine, "call")
        attempts = engine.attempts
        assert isinstance(attempts, Attempts)  # the in-process launcher, which arms
        await eventually(lambda: run.id in attempts._primed, 5, "the attempt armed")
        assert time.time() < at.timestamp() and server.requests == [], "connected, nothing sent yet"
        run = await finished(engine, run.id)
        assert run.state == RunState.succeeded and run.http_status == 200
        (req,) = server.requests
        assert req.headers["idempotency-key"] == run.id
        assert server.arrived[0] >= at.timestamp(), "the call arrived at or after the due time"
        assert run.started_at is not None and at <= run.started_at
        assert run.started_at.timestamp() <= server.arrived[0] + 0.001, "started_at is when it was sent"
    finally:
        await server.stop()


async def test_a_big_group_prepared_ahead_is_still_called_at_its_due_time(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`BIG` jobs or more due together are handed over to be sorted ahead of their due time (one
    job paused meanwhile is given up then); not one call goes out before it, and no garbage
    collection can start while the requests are written."""
    collecting: list[bool] = []
    prime = _Shot.prime

    def noting_prime(shot: _Shot) -> Callable[[], object]:
        write = prime(shot)

        def noting() -> object:
            collecting.append(gc.isenabled())
            return write()

        return noting

    monkeypatch.setattr(_Shot, "prime", noting_prime)
    assert gc.isenabled()
    server = await RecordingServer().start()
    try:
        at = due_in(AHEAD + 1.2)
        spec = {"type": "http", "url": server.url("/due"), "allow_private": True}
        names = [f"call-{i}" for i in range(BIG + 8)]
        for name in names:
            trig = [{"type": "at", "at": at.isoformat()}]
            await engine.put_job(Job.model_validate({"name": name, "triggers": trig, "target": spec}))
        runs = [await the_run(engine, name) for name in names]
        await engine.pause(names[0])
        ended = [await finished(engine, run.id) for run in runs]
        assert ended[0].state == RunState.cancelled and ended[0].error is not None
        assert ended[0].error.reason == "NotDue"
        assert all(r.state == RunState.succeeded for r in ended[1:])
        assert len(server.requests) == len(names) - 1
        assert min(server.arrived) >= at.timestamp(), "no call before the due time"
        assert all(r.started_at is not None and r.started_at >= at for r in ended[1:])
        assert collecting == [False] * (len(names) - 1) and gc.isenabled()
    finally:
        await server.stop()
