"""What a start does once per job, and only once: with 100,000 jobs every pass over them is
seconds of `jobwire serve`'s start (docs/scale.md). Each test here fails if a pass comes back
twice, or one per source kind."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from jobwire.config import Settings
from jobwire.engine import Engine
from jobwire.engine.scheduler import TimeScheduler
from jobwire.engine.sources import bindings_by_kind
from jobwire.model import Job, Retry, format_duration
from jobwire.plug import SourcePlug
from jobwire.sources.base import Binding
from jobwire.store import StoredJob


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
