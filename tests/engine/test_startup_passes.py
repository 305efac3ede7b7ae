"""What a start does once per job, and only once: with 100,000 jobs every pass over them is
seconds of `jobwire serve`'s start (docs/scale.md). Each test here fails if a pass comes back
twice, or one per source kind."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from jobwire.config import Settings
from jobwire.engine import Engine
from jobwire.engine.scheduler import TimeScheduler
from jobwire.engine.sources import bindings_by_kind
from jobwire.model import Job, Retry, RunState, format_duration
from jobwire.plug import SourcePlug
from jobwire.sources.base import Binding
from jobwire.store import StoredJob
from tests.support.waiting import eventually


def write_jobs(path: Path, n: int) -> Path:
    jobs = [
        {"name": f"j{i}", "triggers": [{"cron": f"{i} 3 * * *"}], "target": {"type": "local", "command": ["true"]}}
        for i in range(n)
    ]
    path.write_text(json.dumps({"jobs": jobs}))
    return path


async def test_each_job_is_scheduled_once_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = TimeScheduler.set_job

    def counting(self: TimeScheduler, job: Job, paused: bool, now: Any = None) -> None:
        calls.append(job.name)
        real(self, job, paused, now)

    monkeypatch.setattr(TimeScheduler, "set_job", counting)
    jobs = write_jobs(tmp_path / "jobs.json", 5)
    engine = Engine(Settings(data_dir=tmp_path / "data", jobs=[jobs], shutdown_grace=timedelta(seconds=5)))
    await engine.start()
    try:
        assert sorted(calls) == [f"j{i}" for i in range(5)], "one heap entry built per job, not two"
        upcoming = {name for _, name, _ in engine.scheduler.upcoming(10)}
        assert upcoming == {f"j{i}" for i in range(5)}, "and every job is on the clock"
    finally:
        await engine.stop()


def stored(job: dict[str, Any]) -> StoredJob:
    full = {"target": {"type": "local", "command": ["true"]}, **job}
    return StoredJob(job=Job.model_validate(full), origin="api", paused=False, updated_at=datetime.now(UTC))


def plug(kind: str, global_bindings: Any = None) -> SourcePlug:
    return SourcePlug(kind=kind, trigger=None, settings=None, load="x:y", extra=kind, global_bindings=global_bindings)


def test_bindings_of_every_kind_in_one_pass() -> None:
    jobs = [
        stored({"name": "a", "triggers": [{"cron": "* * * * *"}, {"type": "amqp", "queue": "q1"}]}),
        stored({"name": "b", "triggers": [{"type": "amqp", "queue": "q2"}, {"type": "amqp", "queue": "q3"}]}),
        stored({"name": "c", "triggers": [{"type": "mqtt", "topic": "t/1"}]}),
        stored({"name": "d", "triggers": [{"type": "api"}]}),
    ]
    extra = Binding(None, "shared", None)
    settings = {"mqtt": "the mqtt settings"}
    seen: list[Any] = []

    def global_mqtt(s: Any) -> list[Any]:
        seen.append(s)
        return [extra]

    out = bindings_by_kind([plug("amqp"), plug("mqtt", global_mqtt), plug("sqs")], jobs, settings)
    assert {k: [(b.job, b.trigger_id) for b in v] for k, v in out.items()} == {
        "amqp": [("a", "amqp"), ("b", "amqp-1"), ("b", "amqp-2")],
        "mqtt": [("c", "mqtt"), (None, "shared")],
        "sqs": [],
    }
    assert out["amqp"][0].trigger is jobs[0].job.triggers[1]
    assert seen == ["the mqtt settings"], "a kind's own settings reach its global bindings"


@pytest.mark.parametrize("seconds", [0, 1, 1.5, 300, 3600, 604800, 0.25])
def test_a_duration_serializes_as_it_always_did(seconds: float) -> None:
    td = timedelta(seconds=seconds)
    retry = Retry(backoff=td, max_backoff=td)
    first = json.loads(retry.model_dump_json())
    assert first["backoff"] == first["max_backoff"] == format_duration(td)
    assert json.loads(retry.model_dump_json()) == first, "the remembered text is the same text"


def test_durations_past_the_memory_limit_still_serialize() -> None:
    for ms in range(5000):  # more distinct values than are remembered
        td = timedelta(milliseconds=ms)
        assert json.loads(Retry(backoff=td).model_dump_json())["backoff"] == format_duration(td)


def test_chain_edges_replaced_one_job_at_a_time_match_a_rebuild() -> None:
    from jobwire.engine.chains import ChainIndex

    def define(name: str, parents: list[str]) -> StoredJob:
        return stored({"name": name, "triggers": [{"type": "api"}] + [{"after": p} for p in parents]})

    rng = random.Random(7)
    jobs: dict[str, StoredJob] = {}
    index = ChainIndex()
    for _ in range(300):
        name = f"j{rng.randrange(12)}"
        if rng.random() < 0.25:
            jobs.pop(name, None)
            index.replace(name, None)
        else:
            jobs[name] = define(name, rng.sample([f"j{i}" for i in range(12)], rng.randrange(3)))
            index.replace(name, jobs[name].job)
        fresh = ChainIndex()
        fresh.rebuild(jobs)
        assert {p: sorted(e[:2] for e in edges) for p, edges in index._children.items()} == {
            p: sorted(e[:2] for e in edges) for p, edges in fresh._children.items()
        }


async def test_a_job_without_a_source_trigger_leaves_the_sources_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = Engine(Settings(data_dir=tmp_path / "data", shutdown_grace=timedelta(seconds=5)))
    await engine.start()
    rebuilds: list[None] = []
    monkeypatch.setattr(engine.sources, "changed", lambda: rebuilds.append(None))  # counts the rebuilds asked
    try:
        cron = {"name": "c", "triggers": [{"cron": "0 3 * * *"}], "target": {"type": "local", "command": ["true"]}}
        await engine.put_job(Job.model_validate(cron))
        await engine.delete_job("c")
        assert rebuilds == [], "no source serves a cron or an api trigger: nothing to rebuild"
        mqtt = {**cron, "name": "m", "triggers": [{"type": "mqtt", "topic": "t/x"}]}
        await engine.put_job(Job.model_validate(mqtt))
        assert len(rebuilds) == 1
        await engine.put_job(Job.model_validate({**mqtt, "triggers": [{"type": "api"}]}))
        assert len(rebuilds) == 2, "a job that loses its source trigger: its source goes"
        await engine.delete_job("m")
        assert len(rebuilds) == 2
    finally:
        await engine.stop()


async def test_queued_runs_are_promoted_after_a_restart(tmp_path: Path) -> None:
    """`reconcile` starts the queued runs whose slot is free once the engine is back (one pass over
    the runs for every job and concurrency key)."""

    def settings() -> Settings:
        return Settings(data_dir=tmp_path / "data", shutdown_grace=timedelta(milliseconds=200))

    spec = {
        "target": {"type": "local", "command": ["sleep", "30"]},
        "parameters": [{"name": "k"}],
        "concurrency": {"policy": "queue", "max_running": 1, "key": "k"},
    }
    engine = Engine(settings())
    await engine.start()
    try:
        for name in ("a", "b"):
            await engine.put_job(Job.model_validate({"name": name, **spec}))
        admitted = [await engine.trigger(name, {"k": k}) for name in ("a", "b") for k in ("x", "y") for _ in range(2)]
    finally:
        await engine.stop()
    queued = [a.run.id for a in admitted if a.run is not None and a.run.state == RunState.queued]
    assert len(queued) == 4, "one running and one queued per job and key"

    again = Engine(settings())
    await again.start()
    try:
        async def promoted() -> bool | None:
            states = [again.runs[r].state for r in queued if r in again.runs]
            return True if states.count(RunState.queued) == 0 and len(states) == 4 else None

        await eventually(promoted, 10, "every queued run started once its slot was free")
    finally:
        for run_id in queued:
            if run_id in again.runs and not again.runs[run_id].state.terminal:
                await again.cancel(run_id)
        await again.stop()


async def test_a_start_says_what_it_read_and_what_it_saves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A start with 100,000 jobs is seconds of reading and, on PostgreSQL, a minute of saving: it
    says so rather than staying silent."""
    import structlog

    from jobwire.engine import jobs as jobs_module

    monkeypatch.setattr(jobs_module, "SAVE_NOTICE", 3)
    folder = tmp_path / "jobs"
    folder.mkdir()
    write_jobs(folder / "a.json", 3)
    (folder / "b.yaml").write_text("jobs:\n  - name: k\n    target: {type: local, command: ['true']}\n")
    engine = Engine(Settings(data_dir=tmp_path / "data", jobs=[folder], shutdown_grace=timedelta(seconds=5)))
    with structlog.testing.capture_logs() as logs:
        await engine.start()
    try:
        read = [e for e in logs if e["event"] == "job files read"]
        assert len(read) == 1 and (read[0]["files"], read[0]["jobs"]) == (2, 4)
        saving = [e for e in logs if e["event"] == "saving new and changed job definitions to the store"]
        assert [e["jobs"] for e in saving] == [4]
    finally:
        await engine.stop()


async def test_a_reload_saves_its_changes_in_one_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Like a start, a reload writes the definitions that changed in one `save_jobs`, not one
    transaction each (a CSV registry of 10,000 rows, all changed: 10,000 commits)."""
    path = write_jobs(tmp_path / "jobs.json", 4)
    engine = Engine(Settings(data_dir=tmp_path / "data", jobs=[path], shutdown_grace=timedelta(seconds=5)))
    await engine.start()
    try:
        batches: list[list[str]] = []
        singles: list[str] = []
        store = engine.store
        save_jobs, save_job = store.save_jobs, store.save_job

        async def batch(items: list[tuple[Job, str]]) -> list[StoredJob]:
            batches.append([job.name for job, _ in items])
            return await save_jobs(items)

        async def single(job: Job, origin: str) -> StoredJob:
            singles.append(job.name)
            return await save_job(job, origin)

        monkeypatch.setattr(store, "save_jobs", batch)
        monkeypatch.setattr(store, "save_job", single)
        text = json.loads(path.read_text())
        for job in text["jobs"][:3]:
            job["description"] = "changed"
        path.write_text(json.dumps(text))
        assert await engine.reload_files() == []
        assert batches == [["j0", "j1", "j2"]] and singles == []
        assert all(engine.jobs[f"j{i}"].job.description == "changed" for i in range(3))
        assert engine.scheduler.upcoming(10), "the changed jobs are on the clock"
    finally:
        await engine.stop()


def count_deletes(store: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[list[list[str]], list[str]]:
    """The names each `delete_jobs` and each `delete_job` call was given."""
    batches: list[list[str]] = []
    singles: list[str] = []
    delete_jobs, delete_job = store.delete_jobs, store.delete_job

    async def batch(names: list[str]) -> None:
        batches.append(sorted(names))
        await delete_jobs(names)

    async def single(name: str) -> bool:
        singles.append(name)
        return bool(await delete_job(name))

    monkeypatch.setattr(store, "delete_jobs", batch)
    monkeypatch.setattr(store, "delete_job", single)
    return batches, singles


async def test_jobs_of_a_removed_file_are_deleted_in_one_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job file removed between two starts, or before a reload: its jobs go in one
    `delete_jobs` (one transaction), not one transaction each (100,000 jobs: 100,000 commits)."""
    folder = tmp_path / "jobs"
    folder.mkdir()
    write_jobs(folder / "a.json", 3)
    text = json.loads(write_jobs(folder / "b.json", 6).read_text())
    text["jobs"] = text["jobs"][3:]  # b holds j3..j5
    (folder / "b.json").write_text(json.dumps(text))

    def settings() -> Settings:
        return Settings(data_dir=tmp_path / "data", jobs=[folder], shutdown_grace=timedelta(seconds=5))

    engine = Engine(settings())
    await engine.start()
    await engine.stop()
    (folder / "b.json").unlink()
    engine = Engine(settings())
    batches, singles = count_deletes(engine.store, monkeypatch)
    await engine.start()
    try:
        assert batches == [["j3", "j4", "j5"]] and singles == []
        assert sorted(engine.jobs) == ["j0", "j1", "j2"]
        assert sorted(s.job.name for s in await engine.store.list_jobs()) == ["j0", "j1", "j2"]
        (folder / "a.json").write_text(json.dumps({"jobs": []}))
        batches.clear()
        assert await engine.reload_files() == []
        assert batches == [["j0", "j1", "j2"]] and singles == []
        assert engine.jobs == {} and await engine.store.list_jobs() == []
        assert not engine.scheduler.upcoming(10), "nothing left on the clock"
    finally:
        await engine.stop()
