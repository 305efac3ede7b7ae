"""engine/due.py: runs recorded ahead wait in groups by due time. A small group is handed over at
its due time, never before; a group of `BIG` runs or more `lead(n)` before it, time enough to sort
them (its starter then waits out the rest with `until`)."""

from __future__ import annotations

import types
from datetime import UTC, datetime

import pytest

from jobwire.engine import due as due_mod
from jobwire.engine.due import APPROACH, BIG, MAX_LEAD, SPIN, DueGroups, Member, lead, until
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
    """due.py's time, set by the test: `now[0]`; `time.sleep` moves it on, and so does each reading
    of `time.monotonic` (10 µs: `until`'s spin reads it)."""
    now = [T0]

    def sleep(s: float) -> None:
        now[0] += s

    def monotonic() -> float:
        now[0] += 1e-5
        return now[0]

    fake = types.SimpleNamespace(time=lambda: now[0], sleep=sleep, monotonic=monotonic)
    monkeypatch.setattr(due_mod, "time", fake)
    return now


@pytest.mark.parametrize(("size", "early"), [(BIG - 1, False), (BIG, True)])
async def test_a_group_is_handed_over_ahead_only_when_big(clock: list[float], size: int, early: bool) -> None:
    handed: list[tuple[float, int]] = []
    groups = DueGroups(lambda due, members: handed.append((clock[0], len(members))))
    due = T0 + 1.0
    for run, job in _members(size):
        groups.add(run, job, due)
    ahead = lead(BIG) - APPROACH / 2  # the timer rings a little ahead, within the lead of a big group
    clock[0] = due - ahead
    groups._ring(due)
    assert handed == ([(due - ahead, size)] if early else [])
    assert len(groups) == (0 if early else size)
    if not early:
        clock[0] = due
        groups._ring(due)
        assert handed == [(due, size)], "a small group at its due time"
    groups.clear()


@pytest.mark.parametrize("size", [BIG, 1000])
async def test_no_group_is_handed_over_more_than_its_lead_ahead(clock: list[float], size: int) -> None:
    handed: list[float] = []
    groups = DueGroups(lambda due, members: handed.append(clock[0]))
    due = T0 + 1.0
    for run, job in _members(size):
        groups.add(run, job, due)
    clock[0] = due - lead(size) - 0.0001
    groups._ring(due)
    assert handed == [] and len(groups) == size
    clock[0] = due - lead(size) + 1e-6  # (not exactly: floats near 1.8e9 are 0.2 µs apart)
    groups._ring(due)
    assert handed == [clock[0]]
    groups.clear()


def test_the_lead_is_time_to_sort_the_group_and_bounded() -> None:
    assert lead(BIG - 1) == 0.0
    assert APPROACH < lead(BIG) < lead(1000) < lead(10_000) <= MAX_LEAD
    assert lead(1000) >= APPROACH + 1000 * 2.9e-6, "1,000 runs took up to 2.9 ms to sort"
    assert lead(1_000_000) == MAX_LEAD


def test_until_waits_out_the_rest(clock: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    sleep = due_mod.time.sleep
    monkeypatch.setattr(due_mod.time, "sleep", lambda s: (slept.append(s), sleep(s)))
    until(T0 + 0.0015)
    assert clock[0] == pytest.approx(T0 + 0.0015, abs=2e-5)
    assert slept == [pytest.approx(0.0015 - SPIN, abs=1e-6)], "asleep until SPIN before, then the clock read"
    until(T0)  # already past: no wait
    assert clock[0] == pytest.approx(T0 + 0.0015, abs=2e-5) and len(slept) == 1
    until(T0 + 0.0016)  # under SPIN away: no sleep at all
    assert clock[0] == pytest.approx(T0 + 0.0016, abs=2e-5) and len(slept) == 1


def test_until_never_blocks_longer_than_the_longest_lead(clock: list[float]) -> None:
    """A wall clock stepped back after the group was handed over must not stall the loop: neither
    the sleep nor the spin after it (which counts on the monotonic clock)."""
    until(T0 + 3600)
    assert clock[0] == pytest.approx(T0 + MAX_LEAD + SPIN, abs=2e-5)
