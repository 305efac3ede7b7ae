"""Runs recorded ahead of their due time (`scheduler.py`, `JOBWIRE_RECORD_AHEAD`), waiting for it.

They wait in groups by due time, one timer per group — 1,000 jobs due at one second are one timer,
not 1,000 — and the group is handed to its starter (`Attempts._start_due`) at once. The loop's
timers are in whole milliseconds and may run a callback up to one early, and a wait of T ends up to
T/1000 late on an idle loop (`scheduler.wait_ahead`), so the timer is set a little ahead and, if it
came early, set again for the rest.

A small group is handed over at its due time, never before. A group of `BIG` runs or more is handed
over `lead(n)` before it: its starter decides then which runs start and which are given up, and
makes each one's write ready (4–6 µs a run: 4–6 ms of 1,000 runs' start spent before the due time
instead of after it), waits out the rest with `until` — the loop blocked, so nothing can change in
between — and starts them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from jobwire.engine.scheduler import wait_ahead
from jobwire.model import Job, Run

Member = tuple[Run, Job]
Starter = Callable[[float, list[Member]], None]
"""Called with a due time (a Unix time) and the runs due then, in the order they were added: at
the due time, or, for `BIG` runs or more, up to `lead(n)` before it (it then calls `until`)."""

BIG = 32
"""Runs due at one time from which their starter is called ahead (`lead`)."""
APPROACH = 0.002
"""The part of a big group's lead that is margin (seconds): the loop's timers are in whole
milliseconds, so the handover comes up to one early or late."""
SORT_COST = 6e-6
"""The starter's time per run to sort a group and prime its writes (seconds): measured 2.6–4.5 µs
and 0.9–1.7 µs for 1,000 HTTP runs (`Attempts._start_due`), the higher on a slow turn of this VM."""
MAX_LEAD = 0.05
"""The longest lead (seconds): 16,000 runs due together are sorted that long ahead, more in part
after their due time."""


def lead(n: int) -> float:
    """How long before its due time a group of `n` runs is handed over: 0 under `BIG` runs, else
    enough to sort them (`SORT_COST` each) with `APPROACH` to spare, at most `MAX_LEAD`. At 1,000
    runs: 8 ms. (A flat 2 ms left 1,000 runs' writes starting 0.8–2.7 ms after their due time; 5 ms,
    once they were primed too, 0.3–1.7 ms after it.)"""
    return 0.0 if n < BIG else min(MAX_LEAD, APPROACH + n * SORT_COST)


SPIN = 0.0003
"""The last part of `until`'s wait spent reading the clock (seconds): `time.sleep` ends 90–180 µs
late on this project's VM (p50–p99), which every run of a big group then starts late by."""


def until(due: float) -> None:
    """Block until `due` (a Unix time; at most `MAX_LEAD` away, see `DueGroups`): a sleep to
    `SPIN` before it, then the clock read until it comes. Never longer than `MAX_LEAD`, whatever the
    wall clock did meanwhile (a step back must not stall the loop)."""
    clock = time.time
    left = due - clock()
    if left > SPIN:
        time.sleep(min(left - SPIN, MAX_LEAD))
    end = time.monotonic() + SPIN  # the spin's own bound, on a clock that does not step
    while clock() < due and time.monotonic() < end:
        pass


class DueGroups:
    def __init__(self, start: Starter) -> None:
        self._start = start
        self._groups: dict[float, dict[str, Member]] = {}
        self._timers: dict[float, asyncio.TimerHandle] = {}
        self._due_of: dict[str, float] = {}
        """Each waiting run's due time (Unix)."""

    def __len__(self) -> int:
        return len(self._due_of)

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._due_of

    def add(self, run: Run, job: Job, due: float) -> None:
        """Let `run` wait for `due` (a Unix time in the future)."""
        group = self._groups.get(due)
        if group is None:
            group = self._groups[due] = {}
            self._arm(due)
        group[run.id] = (run, job)
        self._due_of[run.id] = due

    def remove(self, run_id: str) -> Member | None:
        """Take a waiting run out (cancelled); None if it is not waiting here."""
        due = self._due_of.pop(run_id, None)
        if due is None:
            return None
        group = self._groups.get(due, {})
        member = group.pop(run_id, None)
        if not group:
            self._drop(due)
        return member

    def clear(self) -> list[Member]:
        """Stop every timer (shutdown): the runs stay pending in the store, the next start starts them."""
        for timer in self._timers.values():
            timer.cancel()
        members = [m for group in self._groups.values() for m in group.values()]
        self._groups.clear()
        self._timers.clear()
        self._due_of.clear()
        return members

    def _drop(self, due: float) -> None:
        self._groups.pop(due, None)
        timer = self._timers.pop(due, None)
        if timer is not None:
            timer.cancel()

    def _ahead(self, due: float) -> float:
        """How long before `due` its group may be handed over."""
        return lead(len(self._groups.get(due, ())))

    def _arm(self, due: float) -> None:
        delay = due - time.time() - self._ahead(due)
        loop = asyncio.get_running_loop()
        self._timers[due] = loop.call_later(max(0.0, wait_ahead(delay)), self._ring, due)

    def _ring(self, due: float) -> None:
        self._timers.pop(due, None)
        if due - time.time() > self._ahead(due):  # woken too early (on purpose, or by ms rounding)
            self._arm(due)
            return
        group = self._groups.pop(due, {})
        for run_id in group:
            self._due_of.pop(run_id, None)
        if group:
            self._start(due, list(group.values()))


__all__ = ["APPROACH", "BIG", "MAX_LEAD", "DueGroups", "Member", "lead", "until"]
