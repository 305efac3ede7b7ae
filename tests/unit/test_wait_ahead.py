"""The clock never hands the kernel one long wait for a due time (`scheduler.wait_ahead`): Linux
lets a poll/epoll wait of T end up to T/1000 late (at most 0.1 s) when nothing else wakes the
loop, so a fire 45 s away came 45 ms late. It wakes ahead and waits out the rest in short waits."""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jobwire.engine import scheduler
from jobwire.engine.scheduler import TimeScheduler, wait_ahead
from jobwire.model import Incoming, Job
from tests.support.waiting import eventually


def test_wait_ahead_leaves_room_for_the_kernels_slack() -> None:
    for delay in (0.0, 0.004, 0.01):
        assert wait_ahead(delay) == delay  # short waits are waited whole
    for delay in (0.011, 0.5, 1.0, 45.0, 3600.0, 86_400.0):
        wait = wait_ahead(delay)
        slack = min(0.1, delay / 200)  # the kernel's most, for a niced process
        assert 0 < wait < delay and wait + slack < delay, delay
        assert delay - wait <= 0.101 + 1e-9  # never more than ~0.1 s ahead


async def test_the_clock_wakes_ahead_of_a_far_due_time_and_fires_after_short_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[tuple[float, float]] = []  # (asked at, for how long)
    real_timeout = asyncio.timeout

    def recording_timeout(delay: float | None) -> Any:
        if delay is not None and sys._getframe(1).f_globals.get("__name__") == scheduler.__name__:
            waits.append((time.time(), delay))  # the clock's own waits only
        return real_timeout(delay)

    monkeypatch.setattr(asyncio, "timeout", recording_timeout)  # the scheduler calls asyncio.timeout
    fired: list[list[Incoming]] = []
    clock = TimeScheduler(fired.append)
    due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)  # 2 to 3 s away
    clock.set_job(
        Job.model_validate(
            {
                "name": "j",
                "triggers": [{"type": "at", "at": due.isoformat()}],
                "target": {"type": "http", "url": "http://127.0.0.1:9/"},
            }
        ),
        paused=False,
    )
    clock.start()
    try:
        await eventually(lambda: fired, 5, "the fire")
    finally:
        await clock.stop()
    assert fired[0][0].received_at >= due, "never early"
    asked_at, first = waits[0]
    assert first > 1.5, "one long wait first"
    # it asks to be woken ahead of the due time (1 % + 1 ms: ≥ 20 ms here), not at it; what the
    # loop then does (a short wait, or none if a loaded machine woke it late) depends on the load
    assert asked_at + first <= due.timestamp() - 0.02, waits
    assert all(d <= 0.11 for _, d in waits[1:]), f"later waits are short: {waits}"
