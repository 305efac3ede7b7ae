"""The clock hands a fire in `ahead` seconds before its due time (`TimeScheduler(ahead=…)`), at most
one per trigger, and a job with a concurrency limit at its due time."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jobwire.engine import scheduler
from jobwire.engine.scheduler import DUE_TOLERANCE, TimeScheduler
from jobwire.model import Incoming, Job
from tests.support.waiting import eventually


def _job(name: str, **kw: Any) -> Job:
    return Job.model_validate(
        {"name": name, "triggers": [{"cron": "* * * * * *"}], "target": {"type": "http", "url": "http://x/"}, **kw}
    )


async def test_each_fire_is_handed_in_ahead_one_at_a_time() -> None:
    handed: list[tuple[float, Incoming]] = []
    clock = TimeScheduler(lambda batch: handed.extend((time.time(), i) for i in batch), ahead=0.4)
    clock.set_job(_job("tick"), paused=False)
    clock.start()
    try:
        await eventually(lambda: len(handed) >= 3, 6, "three fires")
    finally:
        await clock.stop()
    previous_due = 0.0
    for at, inc in handed[:3]:
        assert inc.scheduled_at is not None
        due = inc.scheduled_at.timestamp()
        assert at < due, "handed in before its due time"
        assert at >= due - 0.4 - DUE_TOLERANCE, "not more than `ahead` before it"
        assert at >= previous_due, "the next fire of a trigger only once the previous one is due"
        previous_due = due


async def test_a_job_with_a_concurrency_limit_is_handed_in_at_its_due_time() -> None:
    handed: list[tuple[float, Incoming]] = []
    clock = TimeScheduler(lambda batch: handed.extend((time.time(), i) for i in batch), ahead=0.4)
    clock.set_job(_job("limited", concurrency={"policy": "forbid"}), paused=False)
    clock.start()
    try:
        await eventually(lambda: len(handed) >= 2, 5, "two fires")
    finally:
        await clock.stop()
    for at, inc in handed[:2]:
        assert inc.scheduled_at is not None
        assert at >= inc.scheduled_at.timestamp() - DUE_TOLERANCE


async def test_set_again_unchanged_after_a_fire_ahead_it_does_not_hand_that_fire_in_twice() -> None:
    handed: list[Incoming] = []
    clock = TimeScheduler(handed.extend, ahead=0.6)
    clock.start()
    try:
        clock.set_job(_job("again"), paused=False)
        first = await eventually(lambda: handed[:1], 5, "the first fire")
        assert first[0].scheduled_at is not None and first[0].scheduled_at > datetime.now(UTC)
        clock.set_job(_job("again"), paused=False)  # the same definition, installed again
        await eventually(lambda: len(handed) >= 2, 5, "the next fire")
    finally:
        await clock.stop()
    times = [i.scheduled_at for i in handed]
    assert len(set(times)) == len(times), "each due time handed in once"
    assert times[1] == times[0] + timedelta(seconds=1)


def _at_job(name: str, at: datetime) -> Job:
    return Job.model_validate(
        {"name": name, "triggers": [{"type": "at", "at": at.isoformat()}], "target": {"type": "http", "url": "http://x/"}}
    )


async def test_a_burst_is_recorded_earlier_by_its_size() -> None:
    handed: list[tuple[float, Incoming]] = []
    clock = TimeScheduler(lambda batch: handed.extend((time.time(), i) for i in batch), ahead=0.2)
    due = datetime.now(UTC) + timedelta(seconds=2)
    n = 2 * scheduler.BURST_MIN
    for k in range(n):
        clock.set_job(_at_job(f"b{k:04}", due), paused=False)
    clock.start()
    try:
        await eventually(lambda: len(handed) == n, 5, "the burst")
    finally:
        await clock.stop()
    lead = 0.2 + scheduler.burst_lead(n)
    assert all(at <= due.timestamp() - 0.2 for at, _ in handed), "earlier than the plain lead"
    assert all(at >= due.timestamp() - lead - DUE_TOLERANCE for at, _ in handed), "by the burst's size"


async def test_a_burst_lead_longer_than_the_interval_still_records_one_fire_ahead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scheduler, "BURST_COST", 0.003)  # 500 fires: 1.5 s, more than their 1 s interval
    handed: list[tuple[float, Incoming]] = []
    clock = TimeScheduler(lambda batch: handed.extend((time.time(), i) for i in batch), ahead=0.2)
    for k in range(scheduler.BURST_MIN):
        clock.set_job(_job(f"s{k:03}"), paused=False)
    clock.start()
    try:
        await eventually(lambda: len(handed) >= 3 * scheduler.BURST_MIN, 8, "three seconds of fires")
    finally:
        await clock.stop()
    last_due: dict[str, float] = {}
    for at, inc in sorted(handed, key=lambda h: h[0]):
        assert inc.scheduled_at is not None and inc.job is not None
        due = inc.scheduled_at.timestamp()
        assert at < due
        assert at >= last_due.get(inc.job, 0.0) - DUE_TOLERANCE, "not before the previous fire is due"
        last_due[inc.job] = due
