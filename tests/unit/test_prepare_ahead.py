"""Ahead of a due time the clock names the jobs due then (`TimeScheduler(prepare=…)`), once per due
time, and `jobs.warm` has each one's target prepare it: an HTTP job's request is built before the
burst, not in it."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from jobwire.config import Settings
from jobwire.engine.jobs import warm
from jobwire.engine.scheduler import TimeScheduler
from jobwire.model import Incoming, Job
from jobwire.store import StoredJob
from jobwire.targets.http import HttpTarget
from tests.support.waiting import eventually


def _job(name: str, at: datetime, url: str = "http://127.0.0.1:9/hook") -> Job:
    return Job.model_validate(
        {"name": name, "triggers": [{"type": "at", "at": at.isoformat()}], "target": {"type": "http", "url": url}}
    )


def _stored(job: Job) -> StoredJob:
    return StoredJob(job=job, origin="api", paused=False, updated_at=datetime.now(UTC))


async def test_the_clock_names_the_jobs_due_next_before_their_time_once() -> None:
    fired: list[list[Incoming]] = []
    prepared: list[tuple[list[str], float, float]] = []
    clock = TimeScheduler(fired.append, prepare=lambda names, due: prepared.append((sorted(names), due, time.time())))
    due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    for n in range(50):
        clock.set_job(_job(f"j{n:02}", due), paused=False)
    clock.set_job(_job("later", due + timedelta(hours=1)), paused=False)
    clock.start()
    try:
        await eventually(lambda: fired, 5, "the fires at the due time")
        for_due = [p for p in prepared if p[1] == due.timestamp()]
        assert len(for_due) == 1, "one preparing per due time, however often the clock wakes"
        names, when, told_at = for_due[0]
        assert names == [f"j{n:02}" for n in range(50)], "exactly the jobs due then"
        assert when == due.timestamp() and told_at < when
        assert sorted(i.job for i in fired[0]) == names
        await eventually(lambda: len(prepared) == 2, 5, "then the next due time's")
        assert prepared[1][0] == ["later"]
    finally:
        await clock.stop()


async def test_warm_builds_each_http_jobs_request_before_it_is_due() -> None:
    target = HttpTarget(Settings(_env_file=None))
    due = datetime.now(UTC) + timedelta(seconds=30)
    jobs = {f"j{n}": _stored(_job(f"j{n}", due)) for n in range(250)}
    jobs["templated"] = _stored(_job("templated", due, "http://127.0.0.1:9/{{ params.x }}"))
    await warm(jobs, {"http": target}, [*jobs, "gone"], due.timestamp())
    cached: dict[int, Any] = target._static
    assert all(cached[id(s.job.target)][1] is not None for n, s in jobs.items() if n != "templated")
    assert cached[id(jobs["templated"].job.target)][1] is None, "a templated request is built per run"
    # past its due time it stops: the burst has begun
    late = {f"k{n}": _stored(_job(f"k{n}", due)) for n in range(300)}
    await warm(late, {"http": target}, list(late), time.time() - 1)
    assert sum(id(s.job.target) in cached for s in late.values()) == 99
