"""Two replicas (two engines, each with its own data folder and store object) on one fresh
PostgreSQL database: what one process kept in memory is shared (docs/replicas.md, "What the
replicas share"): concurrency slots, the callback key, the job catalogue, the status stream and
conditional run updates."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from jobwire.config import Settings
from jobwire.engine import Engine, Forbidden, Unavailable, shared
from jobwire.model import EventOutcome, Job, RunState, StatusDocument
from jobwire.store.postgres import PostgresStore
from tests.support.pgdb import fresh_database
from tests.support.waiting import eventually

PY = sys.executable


def job(name: str, command: list[str], **kw: Any) -> Job:
    return Job.model_validate({"name": name, "target": {"type": "local", "command": command}, **kw})


def wait_for_file(path: Path) -> list[str]:
    """A job that runs until `path` exists (the test creates it to end the run)."""
    code = f"import os, time\nwhile not os.path.exists({str(path)!r}): time.sleep(0.02)"
    return [PY, "-c", code]


@contextlib.asynccontextmanager
async def unheard(engine: Engine) -> AsyncIterator[None]:
    """Job changes made inside send no notification (the jobs table's NOTIFY trigger off): as if
    the other replica's LISTEN session were down meanwhile."""
    store = engine.store
    assert isinstance(store, PostgresStore)
    await store.execute("ALTER TABLE jobs DISABLE TRIGGER jobwire_jobs_notify")
    try:
        yield
    finally:
        await store.execute("ALTER TABLE jobs ENABLE TRIGGER jobwire_jobs_notify")


class Replicas:
    def __init__(self, a: Engine, b: Engine) -> None:
        self.a, self.b = a, b


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[Replicas]:
    async with fresh_database() as url:
        engines: list[Engine] = []
        try:
            for n in range(2):
                settings = Settings(data_dir=tmp_path / f"r{n}", shutdown_grace=timedelta(seconds=5))
                eng = Engine(settings, store=PostgresStore(url, pool_size=4, auto_migrate=True))
                await eng.start()
                engines.append(eng)
            await eventually(lambda: all(e.shared and e.shared.bus.connected for e in engines), 10, "LISTEN")
            yield Replicas(*engines)
        finally:
            for eng in engines:
                await eng.stop()


async def test_a_job_changed_over_one_replica_is_seen_by_the_other(replicas: Replicas) -> None:
    a, b = replicas.a, replicas.b
    t0 = time.monotonic()
    await a.put_job(job("shared", ["true"], triggers=[{"type": "cron", "cron": "0 3 * * *"}]))
    await eventually(lambda: "shared" in b.jobs, 5, "the job on replica b")
    created = time.monotonic() - t0
    assert b.jobs["shared"].job == a.jobs["shared"].job
    assert b.scheduler._keys.get("shared"), "its cron trigger is scheduled on b too"
    # changed over b, seen on a; paused over a, seen on b; deleted over b, gone on a
    await b.put_job(job("shared", ["false"], description="changed on b"))
    await eventually(lambda: a.jobs["shared"].job.description == "changed on b", 5, "the change on a")
    assert not a.scheduler._keys.get("shared"), "the cron trigger it lost is gone on a too"
    await a.pause("shared")
    await eventually(lambda: b.jobs["shared"].paused, 5, "paused on b")
    await b.delete_job("shared")
    await eventually(lambda: "shared" not in a.jobs, 5, "deleted on a")
    assert created < 1.0, f"seen by the other replica after {created:.3f}s"


async def test_the_catalogue_is_resynchronised_after_the_listen_connection_is_lost(
    replicas: Replicas,
) -> None:
    a, b = replicas.a, replicas.b
    assert b.shared is not None
    # a job saved with its table's NOTIFY trigger off stands for one changed while b's LISTEN
    # session was down (a NOTIFY sent then reaches nobody): only the resync on reconnect finds it.
    # (Saving it after the terminate raced the terminate: pg_terminate_backend only signals, and the
    # session could still deliver the NOTIFY — CI saw the job arrive with no restart yet.)
    # b's first read of the catalogue (on connecting) is done once b has a job saved after it
    # (before, that read could run after the save below and find the job: seen once under -n 2)
    await a.put_job(job("before", ["true"]))
    await eventually(lambda: "before" in b.jobs, 10, "b's first catalogue read")
    async with unheard(a):
        await b.store.save_job(job("while-deaf", ["true"]), "api")
    assert "while-deaf" not in b.jobs
    await a.store.execute(  # type: ignore[attr-defined]
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'jobwire-listen' AND pid <> pg_backend_pid() AND datname = current_database()"
    )
    await eventually(lambda: "while-deaf" in b.jobs, 15, "the job after b reconnects")
    tasks = {t["task"]: t for t in b.health()["tasks"]}
    assert tasks["jobwire-replicas-listen"]["restarts"] >= 1


async def test_a_resync_parses_only_the_definitions_that_changed(
    replicas: Replicas, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every start on a shared store re-reads the whole catalogue (notifications may have been
    missed before LISTEN). A definition equal to the one held is taken as it is: with 100,000 jobs,
    parsing and validating each again held the loop past the heartbeat's expiry."""
    from jobwire.store import postgres

    a, b = replicas.a, replicas.b
    for i in range(20):
        await a.put_job(job(f"j{i:02d}", ["true"]))
    await eventually(lambda: all(f"j{i:02d}" in b.jobs for i in range(20)), 10, "the jobs on b")
    async with unheard(a):
        await a.store.save_job(job("j07", ["false"], description="changed unheard"), "api")
    parse = postgres._job_from_row
    parsed: list[str] = []

    def counting(row: Any) -> Any:
        parsed.append(row[0])
        return parse(row)

    monkeypatch.setattr(postgres, "_job_from_row", counting)
    held = {name: s.job for name, s in b.jobs.items()}
    assert await b.job_registry.resync() is True
    assert parsed == ["j07"]
    assert b.jobs["j07"].job.description == "changed unheard"
    assert all(b.jobs[n].job is held[n] for n in held if n != "j07")


async def test_many_jobs_changed_at_once_are_read_in_one_pass(
    replicas: Replicas, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another replica's first start saves its job files' jobs in one transaction: 100,000
    notifications. They are one read of the catalogue here, not a round trip, a parse and a log
    line per job; a few changed jobs are still read one by one."""
    from structlog.testing import capture_logs

    a, b = replicas.a, replicas.b
    async with unheard(a):  # the notifications are handed to refresh below, all at once
        await a.store.save_jobs([(job(f"m{i:03d}", ["true"]), "file:many.yaml") for i in range(150)])
    gets: list[str] = []
    real = b.store.get_job

    async def counting(name: str) -> Any:
        gets.append(name)
        return await real(name)

    monkeypatch.setattr(b.store, "get_job", counting)
    with capture_logs() as logs:
        assert await b.job_registry.refresh({f"m{i:03d}" for i in range(150)}) is True
    assert gets == [] and len(b.jobs) == 150
    said = [(e["event"], e.get("jobs")) for e in logs if "changed by another replica" in e["event"]]
    assert said == [("jobs changed by another replica", 150)]
    async with unheard(a):
        await a.store.save_job(job("m007", ["false"]), "api")
    with capture_logs() as logs:
        assert await b.job_registry.refresh({"m007", "m008"}) is True
    assert gets == ["m007", "m008"]
    said = [(e["event"], e.get("job")) for e in logs if "changed by another replica" in e["event"]]
    assert said == [("job changed by another replica", "m007")]


async def test_an_sse_reader_on_one_replica_sees_runs_made_on_the_other(
    replicas: Replicas, tmp_path: Path
) -> None:
    a, b = replicas.a, replicas.b
    await a.put_job(job("quick", [PY, "-c", "print('hi')"]))
    await eventually(lambda: "quick" in b.jobs, 5, "the job on b")
    on_b, on_a = b.subscribe(), a.subscribe()
    adm = await a.trigger("quick", {})
    assert adm.run is not None
    seen: list[StatusDocument] = []

    async def read(sub: Any, into: list[StatusDocument]) -> None:
        async for doc in sub:
            if doc.run_id == adm.run.id:  # type: ignore[union-attr]
                into.append(doc)
                if doc.action == RunState.succeeded.value:
                    return

    await asyncio.wait_for(read(on_b, seen), 15)
    assert [d.action for d in seen] == ["pending", "running", "succeeded"]
    mine: list[StatusDocument] = []
    await asyncio.wait_for(read(on_a, mine), 15)
    assert [d.action for d in mine] == ["pending", "running", "succeeded"], "own documents not echoed"
    assert b.shared is not None and b.shared.received >= 3


async def _waiting_run(a: Engine, b: Engine) -> str:
    await a.put_job(job("waits", ["true"], callback={"wait": True, "timeout": "1m"}))
    await eventually(lambda: "waits" in b.jobs, 5, "the job on b")
    adm = await a.trigger("waits", {})
    assert adm.run is not None
    run_id = adm.run.id
    await eventually(lambda: a.runs.get(run_id) and a.runs[run_id].state == RunState.running, 10, "running")
    return run_id


async def test_a_callback_reaching_the_other_replica_is_accepted(replicas: Replicas, tmp_path: Path) -> None:
    a, b = replicas.a, replicas.b
    assert a.callback_token("r-x") == b.callback_token("r-x"), "one key for both replicas"
    assert not (tmp_path / "r1" / "secret.key").exists(), "the key lives in the database"
    run_id = await _waiting_run(a, b)
    token = a.callback_token(run_id)
    with pytest.raises(Forbidden):
        await b.callback(run_id, "0" * len(token), True, None, {})
    answer = await b.callback(run_id, token, True, "done elsewhere", {"rows": 3})
    assert answer.id == run_id

    async def ended() -> Any:
        run = await a.get_run(run_id)
        return run if run.state.terminal else None

    run = await eventually(ended, 15, "the run to end on a")
    assert run.state == RunState.succeeded
    assert run.target_status["callback"]["data"] == {"rows": 3}


async def test_a_forwarded_callback_is_answered_once_the_holder_committed_it(
    replicas: Replicas, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answered before, a kill -9 of the holder right after the answer lost the callback (the job
    was told it reported; the run then waited for its timeout)."""
    a, b = replicas.a, replicas.b
    run_id = await _waiting_run(a, b)
    gate = asyncio.Event()
    commit = a.store.commit

    async def held(*args: Any, **kw: Any) -> Any:
        await gate.wait()
        return await commit(*args, **kw)

    monkeypatch.setattr(a.store, "commit", held)
    held_run = a.runs[run_id]
    answer = asyncio.create_task(b.callback(run_id, a.callback_token(run_id), True, "done", {"rows": 1}))
    try:
        await eventually(lambda: "callback" in held_run.target_status, 10, "the callback delivered on a")
        assert not answer.done(), "answered while the holder had not committed the callback"
    finally:
        gate.set()  # (the engines stop behind it)
    assert (await asyncio.wait_for(answer, 15)).id == run_id
    stored = await b.store.get_run(run_id)
    assert stored is not None and stored.target_status["callback"]["data"] == {"rows": 1}


async def test_a_callback_the_holder_never_confirms_is_refused_with_503(
    replicas: Replicas, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = replicas.a, replicas.b
    run_id = await _waiting_run(a, b)

    async def never(*args: Any) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(a.run_states.attempts, "deliver_callback", never)
    monkeypatch.setattr(shared, "FORWARD_WAIT", 0.5)
    with pytest.raises(Unavailable, match="did not confirm the callback"):
        await b.callback(run_id, a.callback_token(run_id), True, None, {})


async def test_max_running_one_holds_across_replicas(replicas: Replicas, tmp_path: Path) -> None:
    a, b = replicas.a, replicas.b
    gate = tmp_path / "gate"
    await a.put_job(job("single", wait_for_file(gate), concurrency={"policy": "forbid"}))
    await eventually(lambda: "single" in b.jobs, 5, "the job on b")
    first = await a.trigger("single", {})
    assert first.run is not None and first.created
    refused = await b.trigger("single", {})
    assert refused.event.outcome == EventOutcome.overlap and refused.run is None
    assert first.run.id in (refused.event.reason or "")
    gate.touch()

    async def ended() -> bool:
        return (await a.get_run(first.run.id)).state.terminal  # type: ignore[union-attr]

    await eventually(ended, 15, "the first run to end")
    again = await b.trigger("single", {})
    assert again.created, "the slot is free again"


async def test_a_run_queued_on_one_replica_starts_when_the_other_frees_the_slot(
    replicas: Replicas, tmp_path: Path
) -> None:
    a, b = replicas.a, replicas.b
    gate = tmp_path / "gate"
    await a.put_job(job("fifo", wait_for_file(gate), concurrency={"policy": "queue"}))
    await eventually(lambda: "fifo" in b.jobs, 5, "the job on b")
    first = await a.trigger("fifo", {})
    second = await b.trigger("fifo", {})
    assert first.run is not None and second.run is not None
    assert second.run.state == RunState.queued, "a's run holds the only slot"
    assert b.runs[second.run.id].state == RunState.queued
    gate.touch()

    async def second_ended() -> bool:
        return (await b.get_run(second.run.id)).state == RunState.succeeded  # type: ignore[union-attr]

    await eventually(second_ended, 20, "b's queued run to start and end")
    assert (await a.get_run(first.run.id)).state == RunState.succeeded
    run = await b.get_run(second.run.id)
    assert [t.state for t in run.history][:2] == [RunState.queued, RunState.pending]


async def test_replace_cancels_the_run_on_the_other_replica(replicas: Replicas, tmp_path: Path) -> None:
    a, b = replicas.a, replicas.b
    await a.put_job(job("newest", wait_for_file(tmp_path / "never"), concurrency={"policy": "replace"}))
    await eventually(lambda: "newest" in b.jobs, 5, "the job on b")
    old = await a.trigger("newest", {})
    assert old.run is not None
    await eventually(lambda: old.run.id in a.runs and a.runs[old.run.id].state == RunState.running, 10)  # type: ignore[union-attr]
    new = await b.trigger("newest", {})
    assert new.run is not None and new.created

    async def cancelled() -> bool:
        return (await a.get_run(old.run.id)).state == RunState.cancelled  # type: ignore[union-attr]

    await eventually(cancelled, 15, "the replaced run on a to be cancelled")
    assert new.run.id in ((await a.get_run(old.run.id)).error.message or "")  # type: ignore[union-attr]
    await b.cancel(new.run.id)


async def test_a_replica_that_writes_an_ended_run_late_loses_and_is_told(replicas: Replicas) -> None:
    a, b = replicas.a, replicas.b
    await a.put_job(job("late", ["true"]))
    adm = await a.trigger("late", {})
    assert adm.run is not None
    stale = adm.run.model_copy(deep=True)  # b's idea of the run, from before it ended

    async def ended() -> bool:
        return (await a.get_run(adm.run.id)).state == RunState.succeeded  # type: ignore[union-attr]

    await eventually(ended, 15, "the run to succeed on a")
    told: list[list[str]] = []
    b.store.on_refused = told.append
    stale.state = RunState.running
    stale.target_ref = "b-thinks-it-runs"
    await b.store.commit([], [stale])
    assert told == [[adm.run.id]]
    stored = await b.store.get_run(adm.run.id)
    assert stored is not None and stored.state == RunState.succeeded and stored.target_ref != "b-thinks-it-runs"
