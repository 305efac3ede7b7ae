"""engine/due.py: runs recorded ahead wait in groups by due time. A small group is handed over at
its due time, never before; a group of `BIG` runs or more up to `APPROACH` before it (its starter
sorts them then and waits out the rest with `until`)."""

from __future__ import annotations

import types
from datetime import UTC, datetime

import pytest

from jobwire.engine import due as due_mod
from jobwire.engine.due import APPROACH, BIG, DueGroups, Member, until
from jobwire.model import Job, Run, RunState

T0 = 1_800_000_000.0


def _members(n: int) -> list[Member]:
    trig = [{"cron": "* * * * * *"}]
    job = Job.model_validate({"name": "j", "triggers": trig, "target": {"type": "http", "url": "http://x/"}})
    now = datetime.now(UTC)
    return [
        (Run(id=f"r{i}", key=f"k{i}", job="j", trigger="0", event_id=f"e{i}", state=RunState.pending, created_at=now), job)
        for i in range(n)
    ]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """due.py's time, set by the test: `now[0]`; `time.sleep` moves it on."""
    now = [T0]

    def sleep(s: float) -> None:
        now[0] += s

    monkeypatch.setattr(due_mod, "time", types.SimpleNamespace(time=lambda: now[0], sleep=sleep))
    return now


@pytest.mark.parametrize(("size", "early"), [(BIG - 1, False), (BIG, True)])
async def test_a_group_is_handed_over_ahead_only_when_big(clock: list[float], size: int, early: bool) -> None:
    handed: list[tuple[float, int]] = []
    groups = DueGroups(lambda due, members: handed.append((clock[0], len(members))))
    due = T0 + 1.0
    for run, job in _members(size):
        groups.add(run, job, due)
    clock[0] = due - APPROACH / 2  # the timer rings a little ahead
    groups._ring(due)
    assert handed == ([(due - APPROACH / 2, size)] if early else [])
    assert len(groups) == (0 if early else size)
    if not early:
        clock[0] = due
        groups._ring(due)
        assert handed == [(due, size)], "a small group at its due time"
    groups.clear()


async def test_no_group_is_handed_over_more_than_approach_ahead(clock: list[float]) -> None:
    handed: list[float] = []
    groups = DueGroups(lambda due, members: handed.append(clock[0]))
    due = T0 + 1.0
    for run, job in _members(BIG * 2):
        groups.add(run, job, due)
    clock[0] = due - APPROACH * 1.5
    groups._ring(due)
    assert handed == [] and len(groups) == BIG * 2
    groups.clear()


def test_until_waits_out_the_rest(clock: list[float]) -> None:
    until(T0 + 0.0015)
    assert clock[0] == pytest.approx(T0 + 0.0015)
    until(T0)  # already past: no wait
    assert clock[0] == pytest.approx(T0 + 0.0015)


def test_until_never_blocks_longer_than_approach(clock: list[float]) -> None:
    """A wall clock stepped back after the group was handed over must not stall the loop."""
    until(T0 + 3600)
    assert clock[0] == pytest.approx(T0 + APPROACH)
